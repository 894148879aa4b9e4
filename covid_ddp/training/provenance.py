"""What a run records about the software and hardware it ran on (for config.json)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import psutil
import torch

_PACKAGES = ("covid_ddp", "torch", "accelerate", "numpy", "scikit-learn", "tensorboard")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_summary() -> dict:
    summary = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        summary["cuda_device"] = torch.cuda.get_device_name(0)
        summary["cuda_version"] = torch.version.cuda
    return summary


def resident_memory_mb() -> float:
    """This process's resident memory now (the main process's, in the history of a run)."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)
