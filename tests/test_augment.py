"""--augment: plausible chest X-ray variations, never a mirror image, reproducible from the seed."""

from __future__ import annotations

import torch

from covid_ddp.training.augment import augment_batch
from covid_ddp.training.config import TrainConfig


def left_bright_images(count: int = 64) -> torch.Tensor:
    images = torch.full((count, 1, 64, 64), 40, dtype=torch.uint8)
    images[..., :24] = 200  # the left third bright: a flip would make the right side brighter
    return images


def test_augmentation_is_off_by_default():
    assert TrainConfig().augment is False


def test_augmented_batches_keep_shape_range_and_orientation():
    torch.manual_seed(0)
    images = left_bright_images()
    augmented = augment_batch(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    assert augmented.min() >= 0 and augmented.max() <= 255
    left, right = augmented[..., :20].mean(dim=(1, 2, 3)), augmented[..., -20:].mean(dim=(1, 2, 3))
    assert (left > right + 100).all(), "no image may be mirrored"


def test_augmentation_changes_images_by_small_amounts():
    torch.manual_seed(0)
    images = left_bright_images()
    augmented = augment_batch(images)
    edge_positions = (augmented[:, 0, 32] > 120).sum(dim=1)  # bright columns on the middle row
    assert edge_positions.unique().numel() > 3, "shifts and zooms differ from image to image"
    assert ((edge_positions - 24).abs() <= 8).all(), "a few pixels, not a different picture"


def test_zero_strength_is_the_identity_and_the_seed_reproduces_a_batch():
    images = left_bright_images(8)
    unchanged = augment_batch(images, max_shift_px=0, max_scale=0, max_contrast=0, max_brightness=0)
    torch.testing.assert_close(unchanged, images.float(), rtol=0, atol=1e-3)
    torch.manual_seed(5)
    first = augment_batch(images)
    torch.manual_seed(5)
    assert torch.equal(augment_batch(images), first)


def test_marks_are_stamped_on_about_half_the_images_reproducibly_and_nowhere_else():
    from covid_ddp.data.marks import add_marks

    assert TrainConfig().augment_marks is False
    images = torch.full((400, 1, 64, 64), 120.0)
    marked = add_marks(images, torch.Generator().manual_seed(3))
    changed = (marked != images).flatten(1).any(dim=1)
    assert 0.4 < changed.float().mean() < 0.6, "probability 0.5 per image"
    assert marked.min() >= 0 and marked.max() <= 255 and marked.dtype == torch.float32
    touched = (marked != images).flatten(1).float().mean(dim=1)[changed]
    assert touched.max() < 0.35, "a mark covers a part of the image, never the whole"
    bright, dark = (marked > 200).flatten(1).any(dim=1), (marked < 30).flatten(1).any(dim=1)
    assert bright.sum() > 50 and dark.sum() > 30, "white and black marks"
    again = add_marks(images, torch.Generator().manual_seed(3))
    assert torch.equal(marked, again)


def test_augment_applies_marks_after_the_geometric_changes():
    from covid_ddp.training.augment import augment

    config = TrainConfig(augment=False, augment_marks=True)
    images = left_bright_images(200)
    out = augment(images, config, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and (out != images.float()).flatten(1).any(dim=1).float().mean() > 0.3


def test_acquisition_changes_tones_and_sharpness_but_never_geometry():
    from covid_ddp.training.augment import acquisition_batch

    assert TrainConfig().augment_acquisition is False
    images = left_bright_images(200)
    changed = acquisition_batch(images, torch.Generator().manual_seed(1))
    assert changed.shape == images.shape and changed.dtype == torch.float32
    assert changed.min() >= 0 and changed.max() <= 255
    # No shift, zoom or flip: the bright-dark edge stays between columns 23 and 24 in every image.
    columns = changed[:, 0].mean(dim=1)
    assert (columns[:, :22].mean(dim=1) > columns[:, 26:].mean(dim=1) + 80).all()
    assert ((columns[:, 22] - columns[:, 25]).abs() > 40).all(), "an edge softened, not moved"
    dark = changed[..., 40:]
    assert dark.mean(dim=(1, 2, 3)).std() > 5, "gamma and window vary the tones from image to image"
    assert dark.std(dim=(1, 2, 3)).max() > 2, "noise on some images"
    assert torch.equal(changed, acquisition_batch(images, torch.Generator().manual_seed(1)))


def test_acquisition_at_zero_strength_is_the_identity():
    from covid_ddp.training.augment import acquisition_batch

    images = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8)
    same = acquisition_batch(images, max_gamma=1.0, max_window=0.0, max_sharpness=0.0, max_noise=0.0)
    torch.testing.assert_close(same, images.float(), rtol=0, atol=1e-3)
