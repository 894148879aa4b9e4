"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split by log-loss,
divides the logits, so that P(COVID) means what it says; the calls' ranking (ROC AUC) is unchanged.

Training folds T into the shipped weights' last layer (its weight and bias divided by T), so every
command that turns the weights' logits into P(COVID) (predict, evaluate, the audit, an ONNX export,
the original script's own ``Net``) applies it without knowing of it; the sidecar and metrics.json
record T, and the calibration before and after.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .metrics import log_loss

LOWEST, HIGHEST = 0.05, 20.0  # the temperatures searched: from 20x sharper to 20x softer
_P_CLIP = 1e-12  # (float64: logits to +-27.6; a float32 softmax reaches 1e-38, which only ties at the extremes)


def logits(p_covid: np.ndarray) -> np.ndarray:
    """log P(COVID) - log P(non-COVID): what a two-class log-softmax model's scores differ by."""
    p = np.clip(np.asarray(p_covid, dtype=np.float64), _P_CLIP, 1 - _P_CLIP)
    return np.log(p) - np.log1p(-p)


def scaled(p_covid: np.ndarray, temperature: float) -> np.ndarray:
    """P(COVID) of the logits divided by ``temperature``."""
    return 1 / (1 + np.exp(-logits(p_covid) / temperature))


def fit_temperature(p_covid: np.ndarray, targets: np.ndarray) -> float:
    """The T in [LOWEST, HIGHEST] with the lowest log-loss of ``scaled(p_covid, T)`` (golden-section
    search on log T: the loss is convex in 1/T); 1.0 when there is nothing to fit (one class)."""
    if len(np.unique(targets)) < 2:
        return 1.0
    z, y = logits(p_covid), np.asarray(targets)

    def loss(log_t: float) -> float:
        p = 1 / (1 + np.exp(-z / math.exp(log_t)))
        return log_loss(p, y)

    low, high = math.log(LOWEST), math.log(HIGHEST)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(80):  # (golden-section: 80 steps narrow 6 units of log T to 1e-16)
        if loss(a) < loss(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return float(math.exp((low + high) / 2))


def fold_temperature(weights: dict[str, torch.Tensor], classifier: str, temperature: float) -> dict:
    """``weights`` with the last layer (``classifier``.weight and .bias) divided by ``temperature``:
    the logits, and so the log-softmax's scores, come out divided by it."""
    folded = dict(weights)
    for name in (f"{classifier}.weight", f"{classifier}.bias"):
        if name in folded:
            folded[name] = folded[name] / temperature
    return folded
