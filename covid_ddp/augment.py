"""On-device augmentation for chest X-rays (``--augment``, off by default).

Small random translation, scale and intensity (contrast, brightness) changes, drawn
per image and applied to the whole batch at once with one ``grid_sample`` on the
device the batch is on. No flips: left and right anatomy differ (the heart sits on
the left), so a mirrored radiograph is not a plausible radiograph. The trainer passes a
generator of the ``augment`` stream of (seed, epoch, rank, step) (``seeding``), so the
draws are their own, apart from dropout's, and a resumed run rebuilds them exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .marks import add_marks


def augment(images: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """What --augment and --augment-marks ask for, in that order, from one generator."""
    if config.augment:
        images = augment_batch(images, generator)
    if config.augment_marks:
        images = add_marks(images.float(), generator)
    return images


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None, max_shift_px: float = 4.0,
                  max_scale: float = 0.1, max_contrast: float = 0.1, max_brightness: float = 10.0) -> torch.Tensor:
    """Raw 0-255 images (N, 1, H, W), any dtype -> augmented float32 images, still 0-255.

    Per image: shift up to ``max_shift_px`` pixels each way, zoom by 1 +/- ``max_scale``,
    contrast 1 +/- ``max_contrast`` around the image mean, brightness +/- ``max_brightness``.
    """
    count, _, height, width = images.shape
    images = images.float()
    draws = torch.rand(count, 5, device=images.device, generator=generator) * 2 - 1  # uniform in [-1, 1)
    zoom = 1 + max_scale * draws[:, 0]
    # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 * s / size there.
    theta = torch.zeros(count, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = 2 * max_shift_px / width * draws[:, 1]
    theta[:, 1, 2] = 2 * max_shift_px / height * draws[:, 2]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # 'border' repeats the edge pixels: no black bars that a real radiograph would not have.
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + max_contrast * draws[:, 3]).view(-1, 1, 1, 1)
    brightness = (max_brightness * draws[:, 4]).view(-1, 1, 1, 1)
    return ((moved - mean) * contrast + mean + brightness).clamp_(0, 255)
