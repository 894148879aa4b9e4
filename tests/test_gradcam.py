"""Grad-CAM heatmaps: shape, range, per-image independence, and no side effects on the model."""

from __future__ import annotations

import numpy as np
import torch

from covid_ddp import Net, gradcam


def model_with_statistics() -> Net:
    torch.manual_seed(0)
    model = Net()
    model.set_normalization(110.0, 45.0)
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (16, 1, 64, 64)).float())  # non-trivial BatchNorm statistics
    return model


def test_heatmaps_are_one_per_image_in_unit_range():
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    model = model_with_statistics()
    per_class = [gradcam(model, images, target_class=label) for label in (0, 1)]
    for heatmaps in per_class:
        assert heatmaps.shape == (5, 64, 64) and heatmaps.dtype == np.float32
        assert heatmaps.min() >= 0 and heatmaps.max() <= 1 + 1e-6
    # With two classes, evidence against one is evidence for the other: each image has a
    # heatmap, scaled to a peak of 1, for at least one class (an untrained model may have none
    # for COVID).
    peaks = np.stack([h.reshape(5, -1).max(axis=1) for h in per_class])
    assert np.isclose(peaks.max(axis=0), 1, atol=1e-5).all()


def test_an_image_gets_the_same_heatmap_alone_or_in_a_batch():
    images = np.random.default_rng(1).integers(0, 256, (4, 1, 64, 64), dtype=np.uint8)
    model = model_with_statistics()
    together = gradcam(model, images, target_class=0)
    alone = gradcam(model, images[2:3], target_class=0)
    np.testing.assert_allclose(alone[0], together[2], atol=1e-5)


def test_the_default_batch_holds_a_bounded_number_of_pixels_and_changes_no_heatmap(monkeypatch):
    """A backward pass keeps every activation: at 224 px a batch of 256 took 8.6 GB."""
    from covid_ddp.models import gradcam as module

    images = np.random.default_rng(2).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    model = model_with_statistics()
    whole = gradcam(model, images, batch_size=5)
    monkeypatch.setattr(module, "BATCH_PIXELS", 2 * 64 * 64)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    np.testing.assert_allclose(gradcam(model, images), whole, atol=1e-5)
    assert calls == [2, 2, 1]


def test_the_model_is_left_as_it_was():
    model = model_with_statistics()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam(model, np.zeros((2, 64, 64), dtype=np.uint8))
    assert model.training, "its mode is restored"
    assert all(p.grad is None for p in model.parameters()), "parameter gradients untouched"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "BatchNorm statistics untouched"


def test_a_confident_model_still_gets_a_heatmap():
    """log-softmax saturates when P(class) ~ 1; the logit margin, which Grad-CAM uses, does not."""
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    model = model_with_statistics()
    reference = gradcam(model, images, target_class=0)
    with torch.no_grad():
        model.fc2.weight.mul_(1000)  # logit margins of thousands: P is exactly 0 or 1 in float32
        model.fc2.bias.mul_(1000)
    np.testing.assert_allclose(gradcam(model, images, target_class=0), reference, atol=1e-4)


def test_the_tensorboard_grid_shows_each_radiograph_under_its_caption_with_its_heatmap():
    from covid_ddp.training.board import tile_grid

    images = np.stack([np.full((64, 64), 200, np.uint8), np.zeros((64, 64), np.uint8)])
    heat = np.zeros((2, 64, 64), np.float32)
    heat[1] = 1.0  # the second image's heatmap is hot everywhere
    plain = tile_grid(images, None, ["a", "b"], columns=2, scale=2)
    overlaid = tile_grid(images, heat, ["a", "b"], columns=2, scale=2)
    assert plain.shape == overlaid.shape == (3, 26 + 128, 2 * 128) and plain.dtype == np.uint8
    first, second = plain[:, 26:, :128], plain[:, 26:, 128:]
    assert (first == 200).all() and (second == 0).all(), "the radiographs, upscaled, untouched without heatmaps"
    assert plain[:, :26].any(), "captions are drawn above the tiles"
    hot = overlaid[:, 26:, 128:].reshape(3, -1).mean(axis=1)
    assert hot[0] > 50 and hot[1] == hot[2] == 0, "a heat of 1 is jet's dark red"
    cold = overlaid[:, 26:, :128].reshape(3, -1).mean(axis=1)
    assert cold[2] > cold[0], "a heat of 0 is jet's blue over the image"
