"""On-device augmentation for chest X-rays (``--augment``, ``--augment-acquisition``, off by default).

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

from ..data.marks import add_marks


def augment(images: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """What --augment, --augment-acquisition and --augment-marks ask for, in that order, from one generator."""
    if config.augment:
        images = augment_batch(images, generator)
    if config.augment_acquisition:
        images = acquisition_batch(images, generator)
    if config.augment_marks:
        images = add_marks(images.float(), generator)
    return images


def wants_augmentation(config) -> bool:
    return config.augment or config.augment_acquisition or config.augment_marks


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


# A 3x3 binomial kernel (Gaussian, sigma ~0.7 px): the softening that one more resampling step,
# a smaller original or a different reconstruction filter leaves on a 64x64 image.
_SOFTEN = torch.tensor([1.0, 2.0, 1.0])
_SOFTEN = (_SOFTEN[:, None] * _SOFTEN[None, :] / 16).view(1, 1, 3, 3)


def acquisition_batch(images: torch.Tensor, generator: torch.Generator | None = None, max_gamma: float = 1.6,
                      max_window: float = 0.25, max_sharpness: float = 1.0, max_noise: float = 6.0) -> torch.Tensor:
    """Raw 0-255 images (N, 1, H, W) -> float32 images as another machine might have made them.

    What differs between hospitals and publications, not between diseases, drawn per image:
    gamma (log-uniform in [1 / ``max_gamma``, ``max_gamma``]: each exporter's tone curve),
    window (the 0-255 range stretched or squeezed by up to ``max_window`` of itself, each end
    on its own), softening or sharpening (``-max_sharpness`` = the 3x3 binomial blur, positive =
    unsharp mask) and Gaussian noise (std up to ``max_noise`` grey levels).
    """
    images = images.float()
    count = images.shape[0]
    draws = torch.rand(count, 5, device=images.device, generator=generator) * 2 - 1  # uniform in [-1, 1)

    def per_image(values):
        return values.view(-1, 1, 1, 1)

    gamma = per_image(max_gamma ** draws[:, 0])
    toned = 255 * (images / 255).clamp_(0, 1) ** gamma
    low, high = per_image(255 * max_window * draws[:, 1] / 2), per_image(255 + 255 * max_window * draws[:, 2] / 2)
    windowed = (toned - low) * 255 / (high - low)
    soft = F.conv2d(F.pad(windowed, (1, 1, 1, 1), mode="replicate"), _SOFTEN.to(images.device))
    sharpened = windowed + per_image(max_sharpness * draws[:, 3]) * (windowed - soft)
    noise = torch.randn(images.shape, device=images.device, generator=generator)
    noisy = sharpened + per_image(max_noise * (draws[:, 4] + 1) / 2) * noise
    return noisy.clamp_(0, 255)
