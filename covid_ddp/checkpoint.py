"""Run folders, resumable epoch checkpoints and the final consolidated weights.

A run folder holds::

    COVID_binary_classifier.pth   the consolidated state_dict (plain keys, fp32, CPU)
    COVID_binary_classifier.json  its decision threshold, chosen on the validation split
    metrics.json, config.json     final test metrics and history; the resolved configuration
    splits.npz                    the train/val/test row indices, to audit or rebuild the split
    checkpoints/epoch_003/        accelerate ``save_state`` folders, the last few kept
    tensorboard/                  event files

Checkpoints are written under a ``.tmp`` name and renamed once every rank has
finished writing, so ``latest`` only ever finds complete ones.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .data import read_npz
from .errors import UserError
from .files import atomic_path, save_torch, write_json

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

    def sums_for(self, process_index: int, num_processes: int) -> list[float]:
        """This rank's share of the interrupted epoch's loss sums (all of it on rank 0 if the count changed)."""
        if not self.partial_sums:
            return [0.0, 0.0]
        if len(self.partial_sums) == num_processes:
            return self.partial_sums[process_index]
        totals = [sum(column) for column in zip(*self.partial_sums)]
        return totals if process_index == 0 else [0.0, 0.0]


class RunLock:
    """An exclusive lock on a run folder, held by the main process for the whole run.

    Two runs writing one folder would interleave checkpoints and overwrite each other's
    weights; the second one refuses instead. ``flock`` is released by the kernel when the
    process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self._handle = None

    def acquire(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.output_dir / LOCK_FILE, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"{self.output_dir} is in use by another covid_ddp run; wait for it to finish or "
                            "choose another --output-dir") from None
        self._handle = handle

    def release(self) -> None:
        """Unlock; a folder the failed run left empty is removed (nothing half-made stays behind)."""
        if self._handle is None:
            return
        (self.output_dir / LOCK_FILE).unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        if not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()


def is_finished_run(output_dir: Path) -> bool:
    return (Path(output_dir) / WEIGHTS_FILE).exists() or (Path(output_dir) / METRICS_FILE).exists()


def clear_run(output_dir: Path) -> None:
    """Remove what a run writes (and nothing else: the folder may hold the user's files)."""
    for name in (WEIGHTS_FILE, decision_path(WEIGHTS_FILE).name, METRICS_FILE, CONFIG_FILE, SPLITS_FILE):
        (Path(output_dir) / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS_DIR, TENSORBOARD_DIR):
        shutil.rmtree(Path(output_dir) / name, ignore_errors=True)


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


def keep_split(output_dir: Path, split, resuming: bool) -> None:
    """Write splits.npz (the rows of each part, to audit or rebuild a split); when resuming,
    refuse a split other than the one the run trained on, or its test images would have been
    trained on in the epochs before."""
    path = Path(output_dir) / SPLITS_FILE
    if resuming and path.is_file():
        saved = read_splits(path)
        if any(not np.array_equal(saved.get(part), rows) for part, rows in split.as_arrays().items()):
            raise UserError(f"{path}: the run was trained on another train/val/test split; resume with the split "
                            f"flags it started with (see {Path(output_dir) / CONFIG_FILE} or its first command)")
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **split.as_arrays())


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


def resolve_resume(resume: str, output_dir: Path | None) -> Path:
    """``latest`` -> the newest complete checkpoint of ``output_dir``; else a checkpoint folder."""
    if resume == "latest":
        if output_dir is None:
            raise UserError("--resume latest needs --output-dir: the run folder whose checkpoints to continue")
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise UserError(f"--resume latest: no complete checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}")
        return checkpoints[-1]
    path = Path(resume)
    if not (path.is_dir() and _CHECKPOINT_NAME.match(path.name) and any(path.glob("model*"))):
        raise UserError(f"--resume {resume}: not a checkpoint folder (expected <run>/{CHECKPOINTS_DIR}/epoch_NNN[_step_NNNNN])")
    return path


def save_checkpoint(accelerator, output_dir: Path, epoch: int, keep: int, step: int = 0) -> Path:
    """Every rank calls this (``save_state`` is collective); the main process renames and prunes."""
    final = checkpoint_path(output_dir, epoch, step)
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
    except OSError as error:  # e.g. ENOSPC: the previous checkpoint stays the latest complete one
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"cannot write checkpoint {final}: {error.strerror or error}; free some space or choose "
                        f"another --output-dir, then --resume latest") from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def consolidated_state_dict(state_dict: dict) -> dict:
    """Plain keys and fp32 CPU tensors: loads into a fresh ``Net`` on any device."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        value = value.detach().to("cpu").contiguous()  # plain NCHW, whatever layout training used
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def export_weights(accelerator, model, output_dir: Path) -> Path:
    """Collective: gathers the full state_dict; the main process alone writes the file."""
    state_dict = accelerator.get_state_dict(model)
    path = Path(output_dir) / WEIGHTS_FILE
    if accelerator.is_main_process:
        save_torch(path, consolidated_state_dict(state_dict))
    accelerator.wait_for_everyone()
    return path


def load_weights(path: Path, map_location="cpu") -> dict:
    """Read a weights file safely: ``weights_only=True`` refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # UnpicklingError, truncated zip, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a loadable weights file ({first_line})")
