"""Checkpoints: the training state of a run (``TrainingState``, ``TrainingProgress``), where each
checkpoint lies, and how the run folder's records are read back (the names: ``run_files``; the
weights and their sidecar: ``models.weights``; ``run_folder.RunFolder`` writes them). A run folder holds::

    COVID_binary_classifier.pth   the consolidated state_dict (plain keys, fp32, CPU)
    COVID_binary_classifier.json  its decision threshold, chosen on the validation split
    config.json                   the resolved configuration (from the start; a resume is checked against it)
    metrics.json                  final test metrics and history
    splits.npz                    the train/val/test row indices, to audit or rebuild the split
    checkpoints/epoch_003/        the training state (``TrainingState``), the last few kept
    tensorboard/                  event files

Checkpoints are written under a ``.tmp`` name and renamed once every rank has
finished writing, so ``latest`` only ever finds complete ones. A checkpoint taken on a
signal, inside an epoch, is ``epoch_NNN_step_NNNNN``: NNN is the epoch in progress.

Nothing in a checkpoint is a pickle: tensors are read with ``torch.load(weights_only=True)``
and the rest is JSON, so resuming a run folder from elsewhere runs no code from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.store import read_npz
from ..errors import UserError, first_line
from ..files import load_plain, save_torch, write_json
from ..run_files import CHECKPOINTS_DIR, METRICS_FILE, WEIGHTS_FILE
from .selection import BestWeights

# A checkpoint folder: the main process writes the first three, every rank its random state.
MODEL_STATE, OPTIMIZER_STATE, LOOP_STATE = "model.pt", "optimizer.pt", "training_state.json"
BEST_MODEL_STATE = "best_model.pt"  # the best epoch's weights (--select-by), when they are not model.pt's
AVERAGE_STATE = "ema.pt"  # --ema: the weight average (then the weights selected from, and shipped)
RANDOM_STATE = "random_state_rank{rank}.pt"
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?$")  # epoch_003, or epoch_003_step_00012
_PICKLED_STATE = ("custom_checkpoint_0.pkl", "random_states_0.pkl")  # accelerate's save_state (covid_ddp 0.1)


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
        self.step, self.partial_sums = 0, []

    def sums_for(self, process_index: int, num_processes: int) -> list[float]:
        """This rank's share of the interrupted epoch's loss sums (all of it on rank 0 if the count changed)."""
        if not self.partial_sums:
            return [0.0, 0.0]
        if len(self.partial_sums) == num_processes:
            return self.partial_sums[process_index]
        totals = [sum(column) for column in zip(*self.partial_sums)]
        return totals if process_index == 0 else [0.0, 0.0]


@dataclass
class TrainingState:
    """The live objects a checkpoint saves and restores, as every rank holds them.

    The main process writes the model (plain keys, whatever wraps it: DDP, torch.compile), the
    optimizer (and fp16's GradScaler) and the loop's state (progress and LR schedule, as JSON);
    every rank writes its random state (dropout draws from the global generators; data order
    and augmentation come from streams rebuilt from (seed, epoch, rank, step)).
    """

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    progress: TrainingProgress
    best: BestWeights = dataclasses.field(default_factory=BestWeights)
    average: object | None = None  # --ema's recipe.WeightAverage: the weights the run selects from

    def _scored(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.average.module if self.average is not None else model

    def save(self, folder: Path) -> None:
        """This rank's share of a checkpoint into ``folder`` (called by every rank)."""
        accelerator, folder = self.accelerator, Path(folder)
        if accelerator.is_main_process:
            save_torch(folder / MODEL_STATE, accelerator.unwrap_model(self.model, keep_torch_compile=False).state_dict())
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            save_torch(folder / OPTIMIZER_STATE, {"optimizer": self.optimizer.state_dict(), "scaler": scaler})
            if self.average is not None:
                save_torch(folder / AVERAGE_STATE, self.average.state_dict())
            if self.best.epoch is not None and not self._best_is_the_model():
                save_torch(folder / BEST_MODEL_STATE, self.best.state)
            write_json(folder / LOOP_STATE, {"progress": self.progress.state_dict(),
                                             "scheduler": self.scheduler.state_dict(),
                                             "num_processes": accelerator.num_processes,
                                             "best_epoch": self.best.epoch})
        save_torch(folder / RANDOM_STATE.format(rank=accelerator.process_index), _random_state(accelerator.device))

    def load(self, folder: Path) -> bool:
        """Restore a checkpoint on this rank; False when its random state does not apply here
        (written by another number of processes): the caller then seeds it afresh."""
        accelerator, folder = self.accelerator, Path(folder)
        loop = _read_loop_state(folder)
        model = accelerator.unwrap_model(self.model, keep_torch_compile=False)
        model.load_state_dict(load_plain(folder / MODEL_STATE, "checkpoint file"))
        saved = load_plain(folder / OPTIMIZER_STATE, "checkpoint file")
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.average is not None:  # (a run's --ema cannot change at a resume: recipe.refuse_swaps)
            self.average.load_state_dict(load_plain(folder / AVERAGE_STATE, "checkpoint file"))
        if accelerator.scaler is not None and saved.get("scaler"):
            accelerator.scaler.load_state_dict(saved["scaler"])
        self.scheduler.load_state_dict(loop["scheduler"])
        self.progress.load_state_dict(loop["progress"])
        self._load_best(folder, loop["best_epoch"], self._scored(model))
        random_state = folder / RANDOM_STATE.format(rank=accelerator.process_index)
        if loop["num_processes"] != accelerator.num_processes or not random_state.is_file():
            return False
        _set_random_state(load_plain(random_state, "checkpoint file"), accelerator.device)
        return True


    def _best_is_the_model(self) -> bool:
        """At the end of the best epoch the model (with --ema, the average) is the best weights:
        model.pt (ema.pt) serves for both."""
        return self.progress.step == 0 and self.best.epoch == self.progress.epoch

    def _load_best(self, folder: Path, best_epoch: int | None, model: torch.nn.Module) -> None:
        self.best.epoch, self.best.state = best_epoch, None  # None: no best weights kept (older checkpoints)
        if best_epoch is not None and self._best_is_the_model():
            self.best.keep(model, best_epoch)
        elif best_epoch is not None:
            self.best.state = load_plain(folder / BEST_MODEL_STATE, "checkpoint file")


def _read_loop_state(folder: Path) -> dict:
    path = folder / LOOP_STATE
    if not path.is_file() and any((folder / name).exists() for name in _PICKLED_STATE):
        raise UserError(f"{folder} was written by covid_ddp 0.1 (accelerate's checkpoint format, whose state files "
                        "are pickles, which could run code when read): it is not resumed. Finish that run with "
                        "covid_ddp 0.1, or start a new one")
    try:
        loop = json.loads(path.read_text())
        return {"progress": loop["progress"], "scheduler": loop["scheduler"],
                "num_processes": int(loop["num_processes"]), "best_epoch": loop.get("best_epoch")}
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {folder} is not a complete checkpoint") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a covid_ddp training state ({type(error).__name__}: {error})") from None


def _random_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def is_finished_run(output_dir: Path) -> bool:
    """Outputs of a run are there (a new run must not overwrite them without --overwrite)."""
    return (Path(output_dir) / WEIGHTS_FILE).exists() or (Path(output_dir) / METRICS_FILE).exists()


def recorded_test_metrics(output_dir: Path) -> dict:
    """A finished run's test metrics (metrics.json's "test"); a damaged file is a user error."""
    path = Path(output_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())["test"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: no test metrics in it ({first_line(error)}); rerun with --overwrite") from None


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


def inside_an_epoch(checkpoint: Path) -> bool:
    """Taken inside an epoch (``epoch_003_step_00012``), not at its end."""
    match = _CHECKPOINT_NAME.match(Path(checkpoint).name)
    return bool(match and match.group(2))


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
