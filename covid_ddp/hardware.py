"""Choices that depend on the hardware a run lands on, made in one place.

Each choice was measured with ``benchmarks/throughput.py`` (figures in the README's
performance section); where a trick does not pay on a device it stays off there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .config import TrainConfig


def resolve_mixed_precision(config: TrainConfig, on_cpu: bool) -> TrainConfig:
    """The precision the run really uses, recorded as such in config.json.

    ``--mixed-precision`` decides; without it, ``auto``: what the device computes natively
    (on real chest X-rays, patient-level, bf16 scored as fp32 did over 5 seeds: README).
    A half precision from the accelerate config (``accelerate launch`` passes it in
    ACCELERATE_MIXED_PRECISION) is kept on a GPU; on a CPU it is a GPU config landing on a
    machine without GPUs, and becomes ``auto``'s choice too (emulated bf16 is slower than
    fp32; fp16 autocast needs a GPU: accelerate would drop it silently), as does fp16 asked
    for on a CPU. The config's ``no`` is also what ``accelerate launch`` sets when nobody
    asked, so it cannot mean "fp32, please": ``--mixed-precision no`` does. An explicit
    ``--mixed-precision bf16`` on a CPU is kept.
    """
    from_config = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    requested = config.mixed_precision or (from_config if from_config != "no" else "auto")
    gpu_setting_on_cpu = on_cpu and (requested == "fp16" or config.mixed_precision is None)
    if requested == "auto" or gpu_setting_on_cpu:
        requested = _native_precision(on_cpu)
    return dataclasses.replace(config, mixed_precision=requested)


def _native_precision(on_cpu: bool) -> str:
    if not on_cpu:
        # Native bf16 only (Ampere and newer, compute capability 8); emulated bf16 on a V100 or
        # T4 is slower than fp16, which runs with a GradScaler.
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    # On a CPU with AVX512-BF16 (this project's 2-core EPYC) bf16 autocast trained 2.2x
    # faster than fp32; without native bf16 it would be emulated, and slower.
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: torch's (private) checks where it has them, else the CPU's flags (Linux)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None for check in checks):
        return any(check() for check in checks if check is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def with_device_defaults(config: TrainConfig, device: torch.device, num_processes: int) -> TrainConfig:
    """Fill in what depends on the device; config.json records the resolved values."""
    if config.eval_batch_size is not None:
        return config
    # On the CPU a batch of 100 stays in cache and scored ~2x faster than 500; a GPU wants
    # large batches to amortise kernel launches.
    per_process = 1000 if device.type == "cuda" else 100
    return dataclasses.replace(config, eval_batch_size=per_process * num_processes)


def tune_backends(device: torch.device) -> None:
    """cuDNN autotuning: every training batch has the same shape, so the search pays once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's Adam; on CUDA its fused kernel (one launch for all parameters, same maths).
    Build it once the model is on ``device``: fused Adam refuses parameters elsewhere."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused_adam(device))


def fused_adam(device: torch.device) -> bool:
    return device.type == "cuda"
