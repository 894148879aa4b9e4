"""The job's processes, as the loop sees them: started on GPUs or the CPU with the device and
precision every rank agreed on, and shut down while Python is fully alive.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

from ..cli import is_main_rank, say
from ..training import hardware
from .config import TrainConfig
from .distributed import (check_gpus_per_machine, check_launch, cpu_only, exchange_before_group, join_restarted_group,
                          refuse_independent_launch)


def start_job(config: TrainConfig) -> tuple[Accelerator, TrainConfig]:
    """The process group (GPUs, or CPU processes where no GPU is usable), and ``config`` with the
    precision every process of it agreed on."""
    check_launch()
    cpu = cpu_only(config.cpu)
    if not cpu and torch.cuda.is_available():
        check_gpus_per_machine()
    timeout = datetime.timedelta(seconds=config.dist_timeout)
    views = exchange_before_group(hardware.local_view(cpu), timeout)
    hardware.agree_device(views)
    precision, why = hardware.agree_precision(views, config.mixed_precision)
    if why and is_main_rank():
        say(f"covid-ddp-train: note: {why}")
    config = dataclasses.replace(config, mixed_precision=precision)  # config.json records what ran
    join_restarted_group(cpu, timeout)
    accelerator = build_accelerator(config, cpu)
    refuse_independent_launch(accelerator.num_processes)
    hardware.tune_backends(accelerator.device)
    return accelerator, config


def build_accelerator(config: TrainConfig, cpu: bool | None = None) -> Accelerator:
    """``config`` with its mixed precision agreed (``hardware.agree_precision``)."""
    accelerator = Accelerator(
        cpu=cpu_only(config.cpu) if cpu is None else cpu,
        mixed_precision=config.mixed_precision,
        dynamo_backend=_dynamo_backend(config.compile),
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with="tensorboard",
        # A placeholder: the run folder is settled (and shared by all ranks) after start-up.
        project_dir=config.output_dir or "runs",
        # split_batches: --eval-batch-size is global and each process scores its slice of every
        # evaluation batch. (Training batches are sharded by loader.EpochBatches, not here.)
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.dist_timeout))],
    )
    # backward() divides by this; ACCELERATE_GRADIENT_ACCUMULATION_STEPS in the environment would
    # override it, while the loop counts cycles with --grad-accum-steps: the flag wins.
    accelerator.gradient_accumulation_steps = config.grad_accum_steps
    return accelerator


def _dynamo_backend(compile_flag: bool) -> str | None:
    """--compile: the accelerate config's backend if it names one, else inductor. Without it,
    None leaves the choice to the accelerate config. Either way the model is compiled after DDP
    wrapping, as accelerate does it."""
    configured = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
    return ("inductor" if configured == "NO" else configured.lower()) if compile_flag else None


def shut_down(accelerator: Accelerator, barrier: bool = True) -> None:
    """Close the trackers and destroy the process group while Python is fully alive.

    Left to interpreter exit, gloo's worker threads can be torn down after the interpreter
    and abort the process ("terminate called without an active exception", SIGABRT) even
    though the run finished. So every reference to the DDP wrapper is dropped and collected,
    then the group is destroyed; the barrier first keeps any rank from leaving mid-collective.
    """
    if barrier:
        accelerator.wait_for_everyone()
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    if grouped:  # (0.4 s of collection, worth it only where there are gloo threads to outlive)
        accelerator.free_memory()
        gc.collect()
    accelerator.end_training()
    if grouped:
        gc.collect()
