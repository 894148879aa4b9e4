"""A deterministic generator of MCFAM-shaped synthetic chest X-rays.

It serves the offline demo and the tests: ``make_synthetic(n, seed)`` returns
``(images, labels)`` exactly like the two MCFAM files, ``(n, 64, 64) uint8`` and
``(n, 4) float32`` one-hot; ``make_synthetic(n, seed, image_size=224)`` draws such films at
another size (rendered on a finer grid; 64, the default, is the generator's original stream).

Every image is a frontal chest film: body, two darker lung fields, a bright
mediastinum and heart, ribs across the lungs, and noise. The classes differ only
in what is inside the lungs:

* 0 (non-COVID, "normal"): nothing.
* 1 (non-COVID, other finding): one focal opacity in one lung.
* 2, 3 (COVID, "PA" / "AP" view): diffuse, bilateral, peripheral, lower-zone
  opacities of varying strength; class 3 also has the AP view's wider heart.

Two things keep the task from being trivial: each image's mean intensity is
reset to a random target drawn independently of the class (so the mean pixel
value carries no label information), and about 2% of the labels are flipped to
the other binary class (so 100% accuracy is impossible).
"""

from __future__ import annotations

import numpy as np

from .format import IMAGE_SIZE

LABEL_NOISE = 0.02
_CHUNK_PIXELS = 512 * 64 * 64  # pixels generated per vectorised step (512 images at 64 px): bounds peak memory.


def make_synthetic(n: int = 10000, seed: int = 0, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` synthetic chest X-rays (``image_size`` square) and their one-hot 4-class labels."""
    if n < 1:
        raise ValueError(f"synthetic set size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 4, size=n)
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // image_size**2)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        images[start:stop] = _render(classes[start:stop], rng, image_size)
    noisy = _flip_some_labels(classes, rng)
    labels = np.eye(4, dtype=np.float32)[noisy]
    return images, labels


def _flip_some_labels(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move ~2% of the images to a class of the other binary group."""
    flip = rng.random(classes.shape[0]) < LABEL_NOISE
    other_group = np.where(classes >= 2, rng.integers(0, 2, classes.shape[0]), rng.integers(2, 4, classes.shape[0]))
    return np.where(flip, other_group, classes)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates in [-1, 1]; y grows downwards (towards the diaphragm)."""
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return yy[None], xx[None]


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return rng.uniform(low, high, size=(n, 1, 1))


def _soft_ellipse(yy, xx, cy, cx, ry, rx, edge=0.08):
    """1 inside the ellipse, 0 outside, with a soft edge (tissue has no hard borders)."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / edge))


def _smooth_field(rng: np.random.Generator, n: int, size: int, coarse: int = 8) -> np.ndarray:
    """Random low-frequency texture in [0, 1]: a coarse grid bilinearly upsampled."""
    coarse_grid = rng.random((n, coarse, coarse))
    positions = np.linspace(0, coarse - 1, size)
    lower = np.floor(positions).astype(int).clip(0, coarse - 2)
    frac = positions - lower
    interp = np.zeros((size, coarse))
    interp[np.arange(size), lower] = 1 - frac
    interp[np.arange(size), lower + 1] = frac
    return interp @ coarse_grid @ interp.T


def _render(classes: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    n = classes.shape[0]
    yy, xx = _grid(size)
    covid = (classes >= 2)[:, None, None]
    ap_view = (classes == 3)[:, None, None]
    focal = (classes == 1)[:, None, None]

    # Anatomy, with per-patient variation in size and position.
    body = _soft_ellipse(yy, xx, _uniform(rng, -0.05, 0.05, n), 0.0, 1.1, _uniform(rng, 0.78, 0.92, n), 0.05)
    lung_cx = _uniform(rng, 0.36, 0.44, n)
    lung_cy = _uniform(rng, -0.08, 0.06, n)
    lung_rx = _uniform(rng, 0.22, 0.28, n)
    lung_ry = _uniform(rng, 0.50, 0.60, n)
    left = _soft_ellipse(yy, xx, lung_cy, -lung_cx, lung_ry, lung_rx)
    right = _soft_ellipse(yy, xx, lung_cy, lung_cx, lung_ry, lung_rx)
    lungs = np.maximum(left, right)
    mediastinum = _soft_ellipse(yy, xx, -0.2, 0.0, 0.7, _uniform(rng, 0.10, 0.14, n))
    heart_rx = np.where(ap_view, _uniform(rng, 0.28, 0.34, n), _uniform(rng, 0.22, 0.28, n))
    heart = _soft_ellipse(yy, xx, _uniform(rng, 0.25, 0.35, n), 0.12, 0.22, heart_rx)

    # Ribs: curved bands across the lungs.
    rib_freq = _uniform(rng, 6.5, 8.5, n)
    rib_phase = _uniform(rng, 0, 2 * np.pi, n)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * rib_freq * (yy - 0.35 * xx**2) / 2 + rib_phase)
    rib_strength = _uniform(rng, 0.04, 0.10, n)

    image = 0.15 + 0.55 * body - 0.35 * lungs * (1 - np.maximum(mediastinum, heart))
    image = image + 0.25 * np.maximum(mediastinum, heart) * body + rib_strength * ribs * lungs

    # COVID: diffuse, bilateral, peripheral, lower-zone, patchy; strength varies a lot.
    peripheral = 1.0 / (1.0 + np.exp(-(np.abs(xx) - lung_cx) / 0.06))
    lower_zone = 1.0 / (1.0 + np.exp(-(yy - lung_cy) / 0.15))
    asymmetry = np.where(xx < 0, _uniform(rng, 0.6, 1.0, n), _uniform(rng, 0.6, 1.0, n))
    patchy = 0.4 + 0.6 * _smooth_field(rng, n, size)
    covid_strength = _uniform(rng, 0.03, 0.30, n)
    image = image + covid * covid_strength * lungs * peripheral * lower_zone * asymmetry * patchy

    # Non-COVID finding: one focal opacity somewhere in one lung.
    side = np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0)
    blob = _soft_ellipse(
        yy, xx,
        lung_cy + _uniform(rng, -0.35, 0.35, n), side * (lung_cx + _uniform(rng, -0.12, 0.12, n)),
        _uniform(rng, 0.07, 0.15, n), _uniform(rng, 0.07, 0.15, n), 0.2,
    )
    image = image + focal * _uniform(rng, 0.10, 0.30, n) * blob * lungs

    # Exposure differences, then noise.
    image = image * _uniform(rng, 0.8, 1.2, n)
    image = image + rng.normal(0.0, 1.0, image.shape) * _uniform(rng, 0.02, 0.05, n)
    # Reset each image's mean to a class-independent target: the mean pixel
    # value alone must not predict the label.
    image = image - image.mean(axis=(1, 2), keepdims=True) + _uniform(rng, 0.38, 0.52, n)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
