"""The original architecture, its keys both ways, the folded normalisation and the reload snippet."""

from __future__ import annotations

import torch
from original_net import Net as OriginalNet
from original_net import trained_like

from covid_ddp import Net
from covid_ddp.models.net import raw_pixel_state_dict
from covid_ddp.models.weights import consolidated_state_dict

# Conv 1->32->64->128->256 (3x3) with BatchNorm, FC 1024->512, FC 512->2.
ORIGINAL_PARAMETERS = (320 + 64) + (18496 + 128) + (73856 + 256) + (295168 + 512) + 524800 + 1026


def test_architecture_matches_the_original():
    model = Net()
    assert sum(p.numel() for p in model.parameters()) == ORIGINAL_PARAMETERS
    assert model.fc1.in_features == 256 * 2 * 2, "flatten size measured on a 64x64 input"
    assert model.dropout.p == 0.7
    out = model.eval()(torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8))
    assert out.shape == (3, 2)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3)), "log-softmax output"


def test_the_state_dict_holds_exactly_the_original_keys():
    ours, original = Net().state_dict(), OriginalNet().state_dict()
    assert list(ours) == list(original), "conv1..conv4, bn1..bn4 (running statistics too), fc1, fc2"
    assert all(ours[k].shape == original[k].shape and ours[k].dtype == original[k].dtype for k in ours)


def test_normalisation_folded_into_conv1_scores_raw_pixels_as_before():
    """Training normalises with the training split's statistics; the weights file, for raw
    pixels, folds them into conv1 (exact: no padding) and loads into the original class."""
    model = trained_like(Net())
    model.set_normalization(117.0, 43.0)
    folded = raw_pixel_state_dict(model.state_dict(), model)
    original = OriginalNet()
    original.load_state_dict(folded, strict=True)
    pixels = torch.randint(0, 256, (8, 1, 64, 64)).float()
    with torch.no_grad():
        torch.testing.assert_close(original.eval()(pixels), model(pixels), rtol=0, atol=1e-4)
        assert (OriginalNet().eval()(pixels) - model(pixels)).abs().max() > 1e-2, "a fold that does nothing fails"


def test_original_reload_snippet_works_with_both_classes(tmp_path):
    model = trained_like(Net())
    model.set_normalization(100.0, 30.0)
    path = tmp_path / "COVID_binary_classifier.pth"
    torch.save(raw_pixel_state_dict(consolidated_state_dict(model.state_dict()), model), path)
    pixels = torch.rand(4, 1, 64, 64) * 255
    for cls in (OriginalNet, Net):  # the original script's class and covid_ddp's, same snippet
        reloaded = cls()
        reloaded.load_state_dict(torch.load(path, weights_only=True))
        reloaded.eval()
        torch.testing.assert_close(reloaded(pixels), model(pixels), rtol=0, atol=1e-4)


def test_consolidated_state_dict_strips_wrappers_and_casts_to_fp32_cpu():
    state = {"module.fc2.bias": torch.zeros(2, dtype=torch.bfloat16), "_orig_mod.bn1.num_batches_tracked": torch.tensor(3)}
    clean = consolidated_state_dict(state)
    assert set(clean) == {"fc2.bias", "bn1.num_batches_tracked"}
    assert clean["fc2.bias"].dtype == torch.float32 and clean["bn1.num_batches_tracked"].dtype == torch.int64


def test_folded_batchnorm_scores_like_the_trained_model():
    from covid_ddp.models.net import fold_batchnorm

    torch.manual_seed(0)
    model = Net()
    model.set_normalization(110.0, 45.0)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randint(0, 256, (16, 1, 64, 64)).float())
    model.eval()
    folded = fold_batchnorm(model)
    images = torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(images), model(images), rtol=0, atol=1e-4)
    assert not any(name.startswith("bn") for name, _ in folded.named_parameters())
    assert "bn1.weight" in model.state_dict(), "the original (the one to save) is left as it was"
