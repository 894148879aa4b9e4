"""SyncBatchNorm for every backend: batch statistics over all processes' shards.

``torch.nn.SyncBatchNorm`` runs on GPUs only. ``--sync-bn`` must also work for CPU
processes (gloo), where it is what makes 2 processes on half batches compute
exactly what 1 process does on full batches. On CUDA we use torch's fused kernel;
elsewhere ``DistributedBatchNorm2d`` all-reduces the per-channel sums with the
differentiable ``torch.distributed.nn.functional.all_reduce``, so autograd
produces the global gradient (its backward all-reduces the gradient too).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn

from ..errors import UserError


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the whole global batch.

    Same parameters and buffers as ``nn.BatchNorm2d``, so state_dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        values = x if x.dtype == torch.float64 else x.float()
        # Two passes (mean, then squared deviations) keep float32 round-off at the level
        # of a single-process BatchNorm; E[x^2] - E[x]^2 would not.
        local_count = torch.tensor([values.numel() / channels], dtype=values.dtype, device=values.device)
        sums = dist_fn.all_reduce(torch.cat([values.sum((0, 2, 3)), local_count]))
        count = sums[-1]
        mean = sums[:channels] / count
        centred = values - mean[None, :, None, None]
        # d(var)/d(mean) = -2/N * sum(x - mean) is exactly zero, but not in float32 over
        # ~10^5 values a channel: detaching the mean here drops that noise from the gradient.
        deviations = values - mean.detach()[None, :, None, None]
        var = dist_fn.all_reduce(deviations.square().sum((0, 2, 3))) / count
        self._update_running_stats(mean.detach(), var.detach(), count.detach())
        normalised = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        out = normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp(min=1)  # as BatchNorm does
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)


class DistributedBatchNormAct2d(DistributedBatchNorm2d):
    """timm's ``BatchNormAct2d`` (BatchNorm, then its dropout and activation) with the global
    statistics of ``DistributedBatchNorm2d``; the same state_dict keys as timm's layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d: on CUDA torch's SyncBatchNorm (timm's converter for a timm model,
    which keeps its norm-act layers' activations), elsewhere ``DistributedBatchNorm2d``."""
    if device.type == "cuda":
        if any(_is_timm_norm_act(module) for module in model.modules()):
            from timm.layers import convert_sync_batchnorm as timm_converter  # torch's drops the activations

            return timm_converter(model)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, _distributed(child))
        else:
            convert_sync_batchnorm(child, device)
    return model


def _distributed(layer: nn.BatchNorm2d) -> DistributedBatchNorm2d:
    if type(layer) is nn.BatchNorm2d:
        replacement = DistributedBatchNorm2d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                             layer.track_running_stats)
    elif _is_timm_norm_act(layer):
        replacement = DistributedBatchNormAct2d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                                layer.track_running_stats)
        replacement.drop, replacement.act = layer.drop, layer.act
    else:  # a layer whose forward is its own: replacing it would train another network than the one shipped
        raise UserError(f"--sync-bn: the model's {type(layer).__name__} layers cannot be synchronised across CPU "
                        "processes; train without --sync-bn")
    replacement.load_state_dict(layer.state_dict())
    return replacement


def _is_timm_norm_act(module: nn.Module) -> bool:
    """timm's BatchNormAct2d (a BatchNorm2d subclass that applies ``drop`` and ``act`` after it)."""
    return (isinstance(module, nn.BatchNorm2d) and type(module).__module__.startswith("timm.")
            and type(module).__name__ == "BatchNormAct2d")
