"""Scoring images with a loaded model on one device: ``predict(model, images)`` -> P(COVID).

    from covid_ddp import load_model, predict
    model = load_model("COVID_binary_classifier.pth")
    p_covid = predict(model, images)   # images: (N, S, S) uint8, raw pixels, S = model.spec.image_size
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


BATCH_SIZE = 512  # images scored at once on a GPU
CPU_BATCH_PIXELS = 32 * 64 * 64  # on a CPU, a batch holds at most this many pixels: Net scores 2x faster in
# batches of 32 than of 100 at 64 px (its activations stay in cache), and at 224 px in batches of 512 it peaks
# at 6.7 GB (docs/evaluation.md)


def batch_size_for(image_size: int, device: torch.device | str) -> int:
    """The default images per batch: BATCH_SIZE on a GPU; on a CPU, as many as CPU_BATCH_PIXELS
    allow (32 at 64 px, 2 at 224 px)."""
    if torch.device(device).type != "cpu":
        return BATCH_SIZE
    return max(1, min(BATCH_SIZE, CPU_BATCH_PIXELS // (image_size * image_size)))


@torch.inference_mode()
def predict(model: torch.nn.Module, images, batch_size: int | None = None, rows=None) -> np.ndarray:
    """P(COVID) for each raw-pixel image of ``images`` ((N, S, S) or (N, 1, S, S)), in batches;
    with ``rows``, for ``images[rows]``, gathered a batch at a time (a mapped store's split is never
    copied whole).

    ``images`` is a NumPy array (or anything ``np.asarray`` takes) or a tensor on any device: a
    tensor already on the model's device (a set held on the GPU) is scored without a round trip
    through host memory. The result is a NumPy array on the host either way. ``batch_size``:
    ``batch_size_for`` the images' size and the model's device, unless given."""
    device = next(model.parameters()).device
    batch_size = batch_size or batch_size_for(images.shape[-1], device)
    probabilities = [model(batch.to(device, non_blocking=True).float())[:, 1].float().exp().cpu()
                     for batch in _batches(images, batch_size, rows)]
    return torch.cat(probabilities).numpy() if probabilities else np.empty(0, dtype=np.float32)


def _batches(images, batch_size: int, rows):
    """(B, 1, S, S) tensors of ``images`` (or of ``images[rows]``), in order."""
    if rows is not None and not isinstance(images, torch.Tensor):
        for start in range(0, len(rows), batch_size):
            yield from _batches(np.asarray(images[rows[start : start + batch_size]]), batch_size, None)
        return
    if not isinstance(images, torch.Tensor):  # np.asarray of a CUDA tensor raises: tensors stay as they are
        images = torch.as_tensor(np.asarray(images))
    if rows is not None:
        images = images[torch.as_tensor(rows, device=images.device)]
    if images.ndim == 3:
        images = images.unsqueeze(1)
    yield from images.split(batch_size)
