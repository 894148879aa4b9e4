"""What a run folder holds, and how each file is read: checkpoints, weights, threshold, splits.

(``run_folder.RunFolder`` writes them during a run.) A run folder holds::

    COVID_binary_classifier.pth   the consolidated state_dict (plain keys, fp32, CPU)
    COVID_binary_classifier.json  its decision threshold, chosen on the validation split
    metrics.json, config.json     final test metrics and history; the resolved configuration
    splits.npz                    the train/val/test row indices, to audit or rebuild the split
    checkpoints/epoch_003/        accelerate ``save_state`` folders, the last few kept
    tensorboard/                  event files

Checkpoints are written under a ``.tmp`` name and renamed once every rank has
finished writing, so ``latest`` only ever finds complete ones. A checkpoint taken on a
signal, inside an epoch, is ``epoch_NNN_step_NNNNN``: NNN is the epoch in progress.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .data import read_npz
from .errors import UserError, first_line
from .files import write_json

WEIGHTS_FILE = "COVID_binary_classifier.pth"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
SPLITS_FILE = "splits.npz"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?$")  # epoch_003, or epoch_003_step_00012
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class TrainingProgress:
    """The loop's own state, saved with each checkpoint.

    ``epoch`` is the last finished epoch. A checkpoint taken inside an epoch (on SIGINT or
    SIGTERM) also records how many steps of the next epoch are done and every rank's running
    loss sums for it, so the resumed run continues exactly where it stopped.
    """

    def __init__(self):
        self.epoch = 0
        self.history: list[dict] = []
        self.step = 0
        self.partial_sums: list[list[float]] = []  # per rank: [sum of losses x batch size, images seen]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "history": self.history, "step": self.step, "partial_sums": self.partial_sums}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.step = int(state.get("step", 0))
        self.partial_sums = [list(map(float, sums)) for sums in state.get("partial_sums", [])]

    def end_epoch(self, record: dict) -> None:
        self.epoch = record["epoch"]
        self.history.append(record)

    def sums_for(self, process_index: int, num_processes: int) -> list[float]:
        """This rank's share of the interrupted epoch's loss sums (all of it on rank 0 if the count changed)."""
        if not self.partial_sums:
            return [0.0, 0.0]
        if len(self.partial_sums) == num_processes:
            return self.partial_sums[process_index]
        totals = [sum(column) for column in zip(*self.partial_sums)]
        return totals if process_index == 0 else [0.0, 0.0]


def is_finished_run(output_dir: Path) -> bool:
    """Outputs of a run are there (a new run must not overwrite them without --overwrite)."""
    return (Path(output_dir) / WEIGHTS_FILE).exists() or (Path(output_dir) / METRICS_FILE).exists()


def decision_path(weights: Path | str) -> Path:
    """The sidecar beside a weights file: the state_dict stays plain, its metadata lives here."""
    return Path(weights).with_suffix(".json")


def write_decision(weights: Path, decision: dict) -> None:
    write_json(decision_path(weights), decision)


def read_decision(weights: Path) -> dict | None:
    """The stored decision threshold of ``weights`` (None without a sidecar); a broken one is a user error."""
    path = decision_path(weights)
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text())
        threshold = float(decision["threshold"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a covid_ddp threshold file ({error}); remove it or pass --threshold")
    if not 0 <= threshold <= 1:
        raise UserError(f"{path}: threshold {threshold} is outside [0, 1]; fix it or pass --threshold")
    return {**decision, "threshold": threshold}


def read_splits(path: Path) -> dict:
    """The arrays of a splits.npz (no pickles; a damaged file is a one-line error)."""
    return read_npz(path)


def checkpoint_path(output_dir: Path, epoch: int, step: int = 0) -> Path:
    """``epoch_003`` after epoch 3; ``epoch_003_step_00012`` after 12 steps of epoch 3."""
    name = f"epoch_{epoch:03d}" + (f"_step_{step:05d}" if step else "")
    return Path(output_dir) / CHECKPOINTS_DIR / name


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (``.tmp`` ones are half-written and ignored)."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name)):
            # A finished epoch sorts after every step inside it.
            step = int(match.group(2)) if match.group(2) else float("inf")
            found.append(((int(match.group(1)), step), path))
    return [path for _, path in sorted(found)]


def epochs_done(checkpoint: Path) -> int:
    """Finished epochs in a checkpoint, read from its name (``epoch_003`` -> 3, ``epoch_003_step_00012`` -> 2)."""
    match = _CHECKPOINT_NAME.match(Path(checkpoint).name)
    return int(match.group(1)) - (1 if match.group(2) else 0)


def checked_checkpoint(path: Path) -> Path:
    """``path`` if it is a complete checkpoint folder, else a one-line error."""
    if not (path.is_dir() and _CHECKPOINT_NAME.match(path.name) and any(path.glob("model*"))):
        raise UserError(f"--resume {path}: not a checkpoint folder (expected <run>/{CHECKPOINTS_DIR}/epoch_NNN"
                        "[_step_NNNNN], or latest, or auto)")
    return path


def consolidated_state_dict(state_dict: dict) -> dict:
    """Plain keys and fp32 CPU tensors: loads into a fresh ``Net`` on any device."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        value = value.detach().to("cpu").contiguous()  # plain NCHW, whatever layout training used
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def load_weights(path: Path, map_location="cpu") -> dict:
    """Read a weights file safely: ``weights_only=True`` refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # UnpicklingError, truncated zip, ...
        with open(path, "rb") as handle:
            zip_archive = handle.read(4) == b"PK\x03\x04"
        if not zip_archive:  # a text file, an image...: torch's own words would be "pop from empty list"
            raise UserError(f"{path}: not a PyTorch weights file (torch.save writes a zip archive and this file is "
                            "not one)") from None
        raise UserError(f"{path}: not a loadable weights file ({first_line(error)})") from None
