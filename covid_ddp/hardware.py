"""Choices that depend on the hardware a run lands on, made in one place.

Each choice was measured with ``benchmarks/throughput.py`` (figures in the README's
performance section); where a trick does not pay on a device it stays off there.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import TrainConfig


def cuda_in_use(config: TrainConfig) -> bool:
    return not config.cpu and torch.cuda.is_available()


def resolve_mixed_precision(config: TrainConfig) -> TrainConfig:
    """Turn ``--mixed-precision auto`` into what the device computes natively."""
    if config.mixed_precision != "auto":
        return config
    if cuda_in_use(config):
        # Native bf16 only (Ampere and newer); emulated bf16 on a V100 or T4 is slower than fp16,
        # which runs with a GradScaler.
        chosen = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    else:
        # On a CPU with AVX512-BF16 (this project's 2-core EPYC) bf16 autocast trained 2.2x
        # faster than fp32; without native bf16 it would be emulated, and slower.
        chosen = "bf16" if cpu_has_native_bf16() else "no"
    return dataclasses.replace(config, mixed_precision=chosen)


def cpu_has_native_bf16() -> bool:
    # torch exposes these checks only as private helpers; absent ones mean "no".
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


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
    """The recipe's Adam; on CUDA its fused kernel (one launch for all parameters, same maths)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
