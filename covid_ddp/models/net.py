"""The original COVID / non-COVID chest X-ray CNN, interchangeable with the original script's.

``Net`` keeps the original layers, names and parameter count, and its state_dict holds
exactly the original's keys (``conv1``..``conv4``, ``bn1``..``bn4`` with their running
statistics, ``fc1``, ``fc2``), for raw 0-255 pixels. So a ``COVID_binary_classifier.pth``
written by covid_ddp loads into the original script's own ``Net`` with the original reload
snippet, and one written by the original script loads here::

    model = Net()
    model.load_state_dict(torch.load("COVID_binary_classifier.pth", weights_only=True))
    model.eval()

Training normalises the pixels with the training split's mean and std (``set_normalization``:
non-persistent buffers, recomputed from the split on resume). The weights file carries no
such buffers: ``raw_pixel_state_dict`` folds the normalisation into ``conv1``, which is exact
because ``conv1`` has no padding (every tap of every output sees an image pixel).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data.format import IMAGE_SIZE, NUM_CLASSES
from ..errors import UserError
from .spec import ModelSpec

NET_MIN_SIZE = 38  # four (conv 3x3, no padding; pool 2) blocks leave 1x1 of a 38x38 image


class Net(nn.Module):
    """Four Conv3x3-BatchNorm-ReLU-MaxPool blocks, FC 512 + Dropout(0.7), FC 2, log-softmax."""

    def __init__(self, dropout: float = 0.7, image_size: int = IMAGE_SIZE):
        super().__init__()
        if image_size < NET_MIN_SIZE:
            raise UserError(f"Net needs images of {NET_MIN_SIZE}x{NET_MIN_SIZE} or more, got {image_size}x{image_size}; "
                            "prepare the data at a larger --image-size")
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3, stride=1)
        self.bn4 = nn.BatchNorm2d(256)
        self.dropout = nn.Dropout(dropout)
        # Identity normalisation until the trainer sets the training split's statistics; not in
        # the state_dict, which keeps the original's keys (see raw_pixel_state_dict).
        self.register_buffer("pixel_mean", torch.zeros(()), persistent=False)
        self.register_buffer("pixel_std", torch.ones(()), persistent=False)
        self.fc1 = nn.Linear(self._flattened_size(image_size), 512)
        self.fc2 = nn.Linear(512, NUM_CLASSES)

    def _flattened_size(self, image_size: int) -> int:
        """Size of the conv features for one image (1024 at 64x64), measured rather than hard-coded."""
        with torch.no_grad():
            return self.features(torch.zeros(1, 1, image_size, image_size)).numel()

    def set_normalization(self, mean: float, std: float) -> None:
        self.pixel_mean.fill_(float(mean))
        self.pixel_std.fill_(float(std))

    def gradcam_layer(self) -> nn.Module:
        return self.bn4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3), (self.conv4, self.bn4)):
            x = F.max_pool2d(F.relu(bn(conv(x))), 2)
        return torch.flatten(x, 1)

    def classifier_name(self) -> str:
        """The last layer's name in the weights file (temperature scaling divides it)."""
        return "fc2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: raw pixel values (0-255), shape (N, 1, S, S). Returns log-probabilities (N, 2)."""
        x = (x - self.pixel_mean) / self.pixel_std
        x = self.features(x)
        x = F.relu(self.dropout(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv4", "bn4"))
NORMALIZATION_KEYS = ("pixel_mean", "pixel_std")  # in weights files of covid_ddp 0.1


def fold_normalization(state_dict: dict, mean: float, std: float) -> dict:
    """``state_dict`` for raw pixels: conv1(((x - mean) / std)) == conv1'(x) with
    W' = W / std and b' = b - mean / std * sum(W) (computed in float64, stored as it was)."""
    folded = dict(state_dict)
    weight, bias = state_dict["conv1.weight"], state_dict["conv1.bias"]
    wide = weight.double()
    folded["conv1.weight"] = (wide / std).to(weight.dtype)
    folded["conv1.bias"] = (bias.double() - mean / std * wide.sum(dim=(1, 2, 3))).to(bias.dtype)
    return folded


def raw_pixel_state_dict(state_dict: dict, model: Net) -> dict:
    """The weights file's state_dict: ``state_dict`` (of ``model``) with ``model``'s pixel
    normalisation folded into conv1, so it holds the original keys only."""
    return fold_normalization(state_dict, float(model.pixel_mean), float(model.pixel_std))


def original_state_dict(state_dict: dict) -> dict:
    """A state_dict of the original's keys from any covid_ddp or original weights file: older
    covid_ddp files carried ``pixel_mean``/``pixel_std``, folded into conv1 here (ValueError where
    they are not one mean and one positive spread)."""
    if not all(key in state_dict for key in (*NORMALIZATION_KEYS, "conv1.weight", "conv1.bias")):
        return state_dict  # (a backbone's keeps its normalisation: not Net's, load_model names the mismatch)
    mean, std = (state_dict[key] for key in NORMALIZATION_KEYS)
    if not all(isinstance(value, torch.Tensor) and value.numel() == 1 for value in (mean, std)) or float(std) <= 0:
        raise ValueError(f"its pixel_mean/pixel_std are not one mean and one positive spread (shapes "
                         f"{_shape(mean)} and {_shape(std)}): not a file covid_ddp wrote")
    rest = {k: v for k, v in state_dict.items() if k not in NORMALIZATION_KEYS}
    return fold_normalization(rest, float(mean), float(std))


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def fold_batchnorm(model: Net) -> Net:
    """An inference-only copy with each BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a per-channel affine map, so it merges into the conv's weights
    and bias: one pass over the activations fewer per block. Outputs equal the original's to
    ~1e-5 (float round-off); on a 2-core CPU fp32 inference ran ~1.3x faster
    (benchmarks/throughput.py). The copy has no ``bn*`` parameters, so save the original.
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in CONV_BN_PAIRS:
        setattr(folded, conv_name, fuse_conv_bn_eval(getattr(folded, conv_name), getattr(folded, bn_name)))
        setattr(folded, bn_name, nn.Identity())
    return folded


# --- every model: Net or a backbone -----------------------------------------------------------


def build_network(spec: ModelSpec, dropout: float = 0.7) -> nn.Module:
    """A fresh model of ``spec`` (initial weights from the global RNG), with ``.spec`` set; raw
    pixels in, log-probabilities out."""
    if spec.name == "net":
        model = Net(dropout=dropout, image_size=spec.image_size)
    else:
        from .backbones import build_backbone  # torchvision/timm are optional and slow to import

        model = build_backbone(spec.name, NUM_CLASSES)
    model.spec = spec  # what predict resizes inputs to, and the sidecar records
    return model


def watch_penultimate(model: nn.Module, captured: list):
    """Hook appending each batch's penultimate features (what the last layer decides from, dropout
    off) to ``captured``: Net's FC 512 after its ReLU, a backbone's pooled features. Returns the handle."""
    if isinstance(model, Net):
        return model.fc1.register_forward_hook(lambda module, args, output: captured.append(
            torch.relu(output).float().cpu()))
    head = model.network.get_submodule(model.layout.head)
    return head.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1).float().cpu()))


def weights_state_dict(state_dict: dict, model: nn.Module) -> dict:
    """The weights file's state_dict of ``model``: Net's with its normalisation folded into conv1
    (the original's keys), a backbone's as it is (its normalisation buffers included)."""
    return raw_pixel_state_dict(state_dict, model) if isinstance(model, Net) else state_dict


def for_inference(model: nn.Module) -> nn.Module:
    """The fastest equivalent of ``model`` for scoring, channels_last: Net with BatchNorm folded in."""
    fast = fold_batchnorm(model) if isinstance(model, Net) else copy.deepcopy(model).eval()
    return fast.to(memory_format=torch.channels_last)
