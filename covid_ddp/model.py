"""The original COVID / non-COVID chest X-ray CNN, with its input normalisation inside.

``Net`` keeps the original layers, names and parameter count, so the original
reload snippet works verbatim::

    from covid_ddp import Net
    model = Net()
    model.load_state_dict(torch.load("COVID_binary_classifier.pth", weights_only=True))
    model.eval()

The two extra buffers, ``pixel_mean`` and ``pixel_std``, hold the training
split's intensity statistics. They are part of the state_dict, so a saved model
is self-contained: inference feeds raw 0-255 pixel values, as the original did.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

IMAGE_SIZE = 64
NUM_CLASSES = 2
CLASS_NAMES = ("Non-COVID", "COVID")


class Net(nn.Module):
    """Four Conv3x3-BatchNorm-ReLU-MaxPool blocks, FC 512 + Dropout(0.7), FC 2, log-softmax."""

    def __init__(self, dropout: float = 0.7):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3, stride=1)
        self.bn4 = nn.BatchNorm2d(256)
        self.dropout = nn.Dropout(dropout)
        # Identity normalisation until the trainer sets the training split's statistics.
        self.register_buffer("pixel_mean", torch.zeros(()))
        self.register_buffer("pixel_std", torch.ones(()))
        self.fc1 = nn.Linear(self._flattened_size(), 512)
        self.fc2 = nn.Linear(512, NUM_CLASSES)

    def _flattened_size(self) -> int:
        """Size of the conv features for one 64x64 image, measured rather than hard-coded."""
        with torch.no_grad():
            return self.features(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)).numel()

    def set_normalization(self, mean: float, std: float) -> None:
        self.pixel_mean.fill_(float(mean))
        self.pixel_std.fill_(float(std))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3), (self.conv4, self.bn4)):
            x = F.max_pool2d(F.relu(bn(conv(x))), 2)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: raw pixel values (0-255), shape (N, 1, 64, 64). Returns log-probabilities (N, 2)."""
        x = (x - self.pixel_mean) / self.pixel_std
        x = self.features(x)
        x = F.relu(self.dropout(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv4", "bn4"))


def fold_batchnorm(model: Net) -> Net:
    """An inference-only copy with each BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a per-channel affine map, so it merges into the conv's weights
    and bias: one pass over the activations fewer per block. Outputs equal the original's to
    ~1e-5 (float round-off); on this project's 2-core CPU fp32 inference ran ~1.3x faster
    (benchmarks/throughput.py). The copy has no ``bn*`` parameters, so save the original.
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in CONV_BN_PAIRS:
        setattr(folded, conv_name, fuse_conv_bn_eval(getattr(folded, conv_name), getattr(folded, bn_name)))
        setattr(folded, bn_name, nn.Identity())
    return folded
