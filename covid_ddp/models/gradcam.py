"""Grad-CAM: where in the image the network's COVID score comes from.

    from covid_ddp import gradcam, load_model
    heatmaps = gradcam(load_model("COVID_binary_classifier.pth"), images)   # (N, S, S) in [0, 1]

Selvaraju et al. 2017: the last conv block's feature maps, weighted by the spatial mean of
the score's gradient with respect to them, summed, passed through ReLU, upsampled to the
input and scaled to [0, 1] per image. The layer is the model's own ``gradcam_layer()``: Net's
last block (4x4 before pooling at 64 px), a ResNet's ``layer4``, a DenseNet's or an
EfficientNet's last ``features`` (7x7 at 224 px), timm's last feature stage. A heatmap is
coarse: it tells "lungs vs. a corner marker or the shoulder", not a lesion outline. That is
exactly the question for a model that may have learned the hospital, not the disease.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .net import Net


# Images a batch holds, as pixels: a backward pass keeps every activation (256 images at 64 px; 21 at
# 224 px, where 256 took 8.6 GB). Each heatmap is scaled on its own: the batch changes no result.
BATCH_PIXELS = 256 * 64 * 64


def gradcam(model: torch.nn.Module, images, target_class: int = 1, batch_size: int | None = None) -> np.ndarray:
    """Heatmaps (N, S, S) in [0, 1] for ``target_class`` (1 = COVID) of raw 0-255 ``images``.

    ``images``: (N, S, S) or (N, 1, S, S), any numeric dtype. The model is used in eval
    mode and left in the mode it was in; its parameters' gradients are not touched.
    ``batch_size``: images a backward pass (default: ``BATCH_PIXELS`` worth).
    """
    images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    batch_size = batch_size or max(1, BATCH_PIXELS // (images.shape[-2] * images.shape[-1]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        maps = [_gradcam_batch(model, batch.to(device).float(), target_class) for batch in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(maps).numpy() if maps else np.empty((0, *images.shape[-2:]), dtype=np.float32)


def _gradcam_batch(model: torch.nn.Module, images: torch.Tensor, target_class: int) -> torch.Tensor:
    captured = {}
    rectify = isinstance(model, Net)

    def keep_activations(module, args, output):
        # Net: the last block's activations after its ReLU (before pooling), as Grad-CAM defines
        # them. Returned in place of BatchNorm's output: the model's own ReLU that follows
        # leaves them unchanged, so the forward pass is the same and autograd reaches them.
        captured["maps"] = F.relu(output) if rectify else output
        return captured["maps"]

    hook = model.gradcam_layer().register_forward_hook(keep_activations)
    try:
        with torch.enable_grad():
            log_p = model(images).float()
            # The logit margin z_target - z_other (log-softmax's difference equals it), not the
            # log-probability: that saturates for a confident model (its gradient vanishes once
            # P is ~1), and the heatmap with it.
            scores = log_p[:, target_class] - log_p[:, 1 - target_class]
            (gradients,) = torch.autograd.grad(scores.sum(), captured["maps"])
    finally:
        hook.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * captured["maps"]).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).float().cpu()
