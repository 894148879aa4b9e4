"""``config.json``: what a run records of itself (flags as they ran, the command, the model, the data
and its split, the processes, the software), for a resume to compare and a reader to cite.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from ..data.confounding import table_of
from ..data.format import RawData, fingerprint, to_binary
from .config import TrainConfig
from .engine import PreparedRun
from .provenance import environment_summary
from .run_folder import RunFolder


def _recorded_flags(config: TrainConfig, data: RawData) -> dict:
    """The flags as they ran; --mcfam-url only for a run on MCFAM files (a folder of one's own was
    never downloaded from it), and --dataset only without --data-dir (which replaces it)."""
    flags = config.to_dict()
    if data.provenance.get("source") != "mcfam":
        flags.pop("mcfam_url")
    if config.data_dir:
        flags.pop("dataset")
    return flags


def _command_line() -> str:
    """This process's command, near enough as typed (a launcher's own flags are in "distributed")."""
    program = Path(sys.argv[0])
    if program.name.startswith("covid-ddp"):
        return shlex.join([program.name, *sys.argv[1:]])
    if program.parts[-3:] == ("covid_ddp", "commands", "train.py"):  # python -m covid_ddp.commands.train (covid-ddp-report)
        return shlex.join(["python", "-m", "covid_ddp.commands.train", *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def _by_source(data: RawData, split) -> dict:
    """Images and patients per source and class of each part (for config.json and the model card)."""
    targets = to_binary(data.labels)
    parts = {"all": np.concatenate(list(split.as_arrays().values())), **split.as_arrays()}
    tables = {part: table_of(data.meta, targets, rows) for part, rows in parts.items()}
    return {"by_source": tables} if tables["train"] is not None else {}


def run_config(config: TrainConfig, accelerator: Accelerator, data: RawData, split, folder: RunFolder,
                run: PreparedRun) -> dict:
    return {
        "config": _recorded_flags(config, data),
        "output_dir": str(folder.path),
        "command": _command_line(),
        "model": {**run.spec.to_dict(), "parameters": sum(p.numel() for p in run.model.parameters())},
        "data": {"source": data.provenance.get("source", config.dataset), **data.provenance,
                 "fingerprint": fingerprint(data),
                 "split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                 "copies_kept_together": {"groups": split.copy_groups[0], "images": split.copy_groups[1]},
                 **_by_source(data, split)},
        "distributed": {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                        "mixed_precision": accelerator.mixed_precision, "data_device": run.data_device,
                        "train_loader": run.train_loader_kind,
                        "distributed_type": str(accelerator.distributed_type),
                        "dynamo_backend": str(accelerator.state.dynamo_plugin.backend.value)},
        "environment": environment_summary(),
    }
