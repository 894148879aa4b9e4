"""Grad-CAM: where in the image the network's COVID score comes from.

    from covid_ddp import gradcam, load_model
    heatmaps = gradcam(load_model("COVID_binary_classifier.pth"), images)   # (N, 64, 64) in [0, 1]

Selvaraju et al. 2017: the last conv block's feature maps, weighted by the spatial mean of
the score's gradient with respect to them, summed, passed through ReLU, upsampled to the
input and scaled to [0, 1] per image. The last block of ``Net`` is 4x4 before pooling, so a
heatmap is coarse: it tells "lungs vs. a corner marker or the shoulder", not a lesion outline.
That is exactly the question for a model that may have learned the hospital, not the disease.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import Net


def gradcam(model: Net, images, target_class: int = 1, batch_size: int = 256) -> np.ndarray:
    """Heatmaps (N, 64, 64) in [0, 1] for ``target_class`` (1 = COVID) of raw 0-255 ``images``.

    ``images``: (N, 64, 64) or (N, 1, 64, 64), any numeric dtype. The model is used in eval
    mode and left in the mode it was in; its parameters' gradients are not touched.
    """
    images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        maps = [_gradcam_batch(model, batch.to(device).float(), target_class) for batch in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(maps).numpy() if maps else np.empty((0, *images.shape[-2:]), dtype=np.float32)


def _gradcam_batch(model: Net, images: torch.Tensor, target_class: int) -> torch.Tensor:
    captured = {}

    def keep_activations(module, args, output):
        # The last block's activations after its ReLU (before pooling), as Grad-CAM defines
        # them. Returned in place of BatchNorm's output: the model's own ReLU that follows
        # leaves them unchanged, so the forward pass is the same and autograd reaches them.
        captured["maps"] = F.relu(output)
        return captured["maps"]

    def keep_logits(module, args, output):
        captured["logits"] = output

    hooks = [model.bn4.register_forward_hook(keep_activations), model.fc2.register_forward_hook(keep_logits)]
    try:
        with torch.enable_grad():
            model(images)
            # The logit margin z_target - z_other, not the log-probability: log-softmax saturates
            # for a confident model (its gradient vanishes once P is ~1), and the heatmap with it.
            logits = captured["logits"].float()
            scores = logits[:, target_class] - logits[:, 1 - target_class]
            (gradients,) = torch.autograd.grad(scores.sum(), captured["maps"])
    finally:
        for hook in hooks:
            hook.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * captured["maps"]).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).float().cpu()
