"""Standard backbones for one-channel radiographs: torchvision's ResNet, DenseNet, EfficientNet, and timm's.

    covid-ddp-train --model resnet18 --data-dir DIR_224            # random initial weights
    covid-ddp-train --model densenet121 --init-weights densenet121-a639ec97.pth --data-dir DIR_224

Each network is built with two outputs and a one-channel first convolution, and wrapped in
``Backbone``: raw 0-255 pixels in, normalised by the training split's mean and std (kept in the
state_dict, so the weights file needs nothing else), log-probabilities out, as ``Net`` gives.
Nothing is ever downloaded: ``--init-weights`` reads a state_dict the user saved (ImageNet or
chest X-ray weights), with its three-channel first convolution summed to one (the response of
the summed kernel to a grey image equals the original's to the same image in three equal
channels) and its classifier head left out (ours has two classes).

torchvision and timm are optional, and a torchvision wheel imports only beside the torch build
it was made for (a CUDA wheel beside a CPU-only torch fails to import), so a missing or broken
install is a one-line error naming the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, first_few

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class Layout:
    """Where the parts we change or watch sit in a network, by module name."""

    first_conv: str  # the RGB stem convolution, made one-channel
    head: str  # the classifier, replaced (and skipped when initial weights are loaded)
    gradcam: str  # the last feature maps before global pooling


TORCHVISION = {
    "resnet18": Layout("conv1", "fc", "layer4"),
    "resnet50": Layout("conv1", "fc", "layer4"),
    "densenet121": Layout("features.conv0", "classifier", "features"),
    "efficientnet_b0": Layout("features.0.0", "classifier.1", "features"),
}
MODEL_NAMES = ("net", *TORCHVISION)  # --model's choices, besides timm:NAME


class Backbone(nn.Module):
    """A standard network on raw pixels: normalisation in front, log-softmax behind.

    ``pixel_mean``/``pixel_std`` are persistent buffers (unlike ``Net``'s, whose weights file
    must hold the original's keys only): a backbone's first convolution pads, so folding the
    normalisation into it would not be exact at the borders.
    """

    def __init__(self, network: nn.Module, layout: Layout):
        super().__init__()
        self.network = network
        self.layout = layout
        self.register_buffer("pixel_mean", torch.zeros(()))
        self.register_buffer("pixel_std", torch.ones(()))

    def set_normalization(self, mean: float, std: float) -> None:
        self.pixel_mean.fill_(float(mean))
        self.pixel_std.fill_(float(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: raw pixel values (0-255), shape (N, 1, H, W). Returns log-probabilities (N, 2)."""
        return F.log_softmax(self.network((x - self.pixel_mean) / self.pixel_std), dim=1)

    def gradcam_layer(self) -> nn.Module:
        return self.network.get_submodule(self.layout.gradcam)

    def classifier_name(self) -> str:
        """The last layer's name in the weights file (temperature scaling divides it)."""
        return f"network.{self.layout.head}"


def check_model_name(name: str) -> None:
    """``--model``: one of MODEL_NAMES or timm:NAME; anything else is a one-line error."""
    if name in MODEL_NAMES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)):
        return
    raise UserError(f"--model {name}: unknown; use one of {', '.join(MODEL_NAMES)}, or timm:NAME (with timm installed)")


def build_backbone(name: str, num_classes: int = 2) -> Backbone:
    """``name`` with random initial weights (from the global RNG), one input channel, ``num_classes`` outputs."""
    if name.startswith(TIMM_PREFIX):
        return _timm_backbone(name.removeprefix(TIMM_PREFIX), num_classes)
    if name not in TORCHVISION:
        check_model_name(name)
    models = _import("torchvision.models", "torchvision", "install the torchvision built for your torch, e.g. "
                     "pip install torch==2.14.1 torchvision==0.29.1 (each torchvision wheel pins its torch)")
    layout = TORCHVISION[name]
    network = getattr(models, name)(weights=None, num_classes=num_classes)
    _replace(network, layout.first_conv, _one_channel(network.get_submodule(layout.first_conv)))
    return Backbone(network, layout)


def _timm_backbone(name: str, num_classes: int) -> Backbone:
    timm = _import("timm", "timm", 'pip install "covid_ddp[timm]" (it needs torchvision beside a matching torch)')
    try:
        network = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=1)
    except RuntimeError as error:  # "Unknown model (...)"
        raise UserError(f"--model timm:{name}: {error}; timm.list_models() names them") from None
    config = network.pretrained_cfg
    layout = Layout(config["first_conv"], config["classifier"], network.feature_info[-1]["module"])
    return Backbone(network, layout)


def _import(module: str, package: str, fix: str):
    try:
        return __import__(module, fromlist=["_"])
    except (ImportError, RuntimeError) as error:  # RuntimeError: torchvision beside a torch it was not built for
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"the backbones need {package}, which does not import here ({first}); {fix}") from None


def _one_channel(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution taking one input channel."""
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# --- initial weights from a file --------------------------------------------------------------

# torchvision's own DenseNet files name some layers "norm.1" where the modules say "norm1".
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
# Prefixes other programs save their models under (DataParallel, wrapper modules): stripped.
FOREIGN_PREFIXES = ("module.", "network.", "model.")
# Tensors of a saved model that are not its network's: a covid_ddp weights file's normalisation
# (set anew for the run: --input-scale), torchxrayvision's per-pathology operating points.
NOT_NETWORK_KEYS = ("pixel_mean", "pixel_std", "op_threshs")


def load_initial_weights(model: Backbone, state_dict, path) -> dict:
    """Copy ``state_dict`` (a network's weights saved by the user) into ``model.network``.

    Its three-channel first convolution is summed to one channel; its head is left out. Any
    other missing, unexpected or differently shaped tensor is a one-line error naming the
    first few. Returns what was done."""
    if isinstance(state_dict, dict) and not _tensors_only(state_dict):
        for key in ("state_dict", "model"):  # a training checkpoint holding the weights under one key
            if isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
                break
    if not isinstance(state_dict, dict) or not _tensors_only(state_dict):
        raise UserError(f"--init-weights {path}: not a state_dict (a dict of tensors): save model.state_dict()")
    state_dict = {_DENSENET_OLD_KEY.sub(r"\1\2", _unwrapped(key)): value for key, value in state_dict.items()}
    layout, own = model.layout, model.network.state_dict()
    head = [key for key in own if key.startswith(layout.head + ".")]
    first = f"{layout.first_conv}.weight"
    summed = first in state_dict and state_dict[first].ndim == 4 and state_dict[first].shape[1] == 3
    if summed:
        state_dict[first] = state_dict[first].sum(dim=1, keepdim=True)
    kept = {key: value for key, value in state_dict.items()
            if not key.startswith(layout.head + ".") and key not in NOT_NETWORK_KEYS}
    missing = sorted(set(own) - set(kept) - set(head))
    unexpected = sorted(set(kept) - set(own))
    reshaped = sorted(f"{key} {tuple(kept[key].shape)} (expected {tuple(own[key].shape)})"
                      for key in set(kept) & set(own) if kept[key].shape != own[key].shape)
    if missing or unexpected or reshaped:
        raise UserError(f"--init-weights {path}: does not fit {_name(model)}: " + "; ".join(
            f"{label}: {first_few(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                              ("other shapes", reshaped)) if keys))
    model.network.load_state_dict(kept, strict=False)
    return {"path": str(path), "tensors": len(kept), "first_conv_summed_from_3_channels": summed,
            "head_replaced": layout.head}


def _tensors_only(state_dict: dict) -> bool:
    return bool(state_dict) and all(isinstance(value, torch.Tensor) for value in state_dict.values())


def _unwrapped(key: str) -> str:
    """A key without DataParallel's ``module.`` or a wrapper's prefix."""
    for prefix in FOREIGN_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _name(model: Backbone) -> str:
    return type(model.network).__name__
