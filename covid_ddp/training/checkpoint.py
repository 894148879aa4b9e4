"""What a run folder holds, and how each file is read: checkpoints, weights, threshold, splits.

(``run_folder.RunFolder`` writes them during a run.) A run folder holds::

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
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import MODEL_NAMES, check_model_name
from .bounds import IMAGE_SIZE, IMAGE_SIZES, PROBABILITY
from .data import read_npz
from .errors import UserError, first_line
from .files import save_torch, write_json
from .selection import BestWeights

WEIGHTS_FILE = "COVID_binary_classifier.pth"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
SPLITS_FILE = "splits.npz"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
# A checkpoint folder: the main process writes the first three, every rank its random state.
MODEL_STATE, OPTIMIZER_STATE, LOOP_STATE = "model.pt", "optimizer.pt", "training_state.json"
BEST_MODEL_STATE = "best_model.pt"  # the best epoch's weights (--select-by), when they are not model.pt's
RANDOM_STATE = "random_state_rank{rank}.pt"
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?$")  # epoch_003, or epoch_003_step_00012
TRAINING_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # what DDP and torch.compile add to the keys
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

    def save(self, folder: Path) -> None:
        """This rank's share of a checkpoint into ``folder`` (called by every rank)."""
        accelerator, folder = self.accelerator, Path(folder)
        if accelerator.is_main_process:
            save_torch(folder / MODEL_STATE, accelerator.unwrap_model(self.model, keep_torch_compile=False).state_dict())
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            save_torch(folder / OPTIMIZER_STATE, {"optimizer": self.optimizer.state_dict(), "scaler": scaler})
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
        if accelerator.scaler is not None and saved.get("scaler"):
            accelerator.scaler.load_state_dict(saved["scaler"])
        self.scheduler.load_state_dict(loop["scheduler"])
        self.progress.load_state_dict(loop["progress"])
        self._load_best(folder, loop["best_epoch"], model)
        random_state = folder / RANDOM_STATE.format(rank=accelerator.process_index)
        if loop["num_processes"] != accelerator.num_processes or not random_state.is_file():
            return False
        _set_random_state(load_plain(random_state, "checkpoint file"), accelerator.device)
        return True


    def _best_is_the_model(self) -> bool:
        """At the end of the best epoch the model is the best weights: model.pt serves for both."""
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


def sidecar_path(weights: Path | str) -> Path:
    """The sidecar JSON beside a weights file: the state_dict stays plain, and this says how to use
    it: the decision threshold (and how it was chosen), the network and image size, the epoch."""
    return Path(weights).with_suffix(".json")


def write_sidecar(weights: Path, decision: dict) -> None:
    write_json(sidecar_path(weights), decision)


def read_sidecar(weights: Path) -> dict | None:
    """The sidecar of ``weights``, its threshold and model record checked (None without one); a broken
    one is a user error."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a covid_ddp sidecar (not JSON: {first_line(error)}); remove it or pass "
                        "--threshold") from None
    if not isinstance(decision, dict) or "threshold" not in decision:
        raise UserError(f"{path}: not a covid_ddp sidecar (no 'threshold'); remove it or pass --threshold")
    if not PROBABILITY.holds(decision["threshold"]):  # a bool is no threshold: JSON true once read as 1.0
        raise UserError(f"{path}: 'threshold' must be a number between 0 and 1, got {decision['threshold']!r}; fix "
                        "it or pass --threshold")
    _check_model_record(path, decision.get("model"))
    return {**decision, "threshold": float(decision["threshold"])}


def _check_model_record(path: Path, model) -> None:
    """The sidecar's {"name": ..., "image_size": ...} (absent: the seed's Net at 64), as covid-ddp-train wrote it."""
    if model is None:
        return
    if not isinstance(model, dict) or not isinstance(model.get("name", "net"), str) or \
            not IMAGE_SIZES.holds(model.get("image_size", IMAGE_SIZE)) or isinstance(model.get("image_size"), float):
        raise UserError(f"{path}: 'model' must be {{\"name\": ..., \"image_size\": {IMAGE_SIZES.describe()}}}, "
                        f"got {json.dumps(model)[:80]}; the weights' run wrote it: restore that file")
    try:
        check_model_name(model.get("name", "net"))
    except UserError:
        raise UserError(f"{path}: 'model' names '{model['name']}', a network this covid_ddp does not know ("
                        f"{', '.join(MODEL_NAMES)} or timm:NAME); the weights' run wrote it: restore that file, or "
                        "use the covid_ddp version that trained them") from None


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


def consolidated_state_dict(state_dict: dict) -> dict:
    """Plain keys and fp32 CPU tensors: loads into a fresh model of its kind on any device."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in TRAINING_WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        value = value.detach().to("cpu").contiguous()  # plain NCHW, whatever layout training used
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def load_weights(path: Path, map_location="cpu") -> dict:
    """Read a weights file safely: ``weights_only=True`` refuses pickled code. A run folder given
    in its place is named as such, with the file inside it."""
    path = Path(path)
    if path.is_dir():
        inside = path / WEIGHTS_FILE
        example = f", e.g. {inside}" if inside.is_file() else ""
        raise UserError(f"{path} is a folder, not a weights file; pass the .pth inside it{example}")
    return refuse_non_finite(load_plain(path, "weights file", map_location), path)


def refuse_non_finite(state_dict, path: Path):
    """Weights holding NaN or Inf score every image NaN (called Non-COVID at any threshold): refused
    by every command that reads weights, naming the first tensor that holds them."""
    for key, value in _tensors(state_dict):
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: the weights hold NaN or Inf values (first in '{key}'): they come from a "
                            "run that diverged or a damaged file; use another weights file")
    return state_dict


def _tensors(tree, prefix: str = ""):
    """(key, tensor) of a state_dict, and of the dicts a checkpoint may wrap it in ('state_dict', ...)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))


def load_plain(path: Path, kind: str, map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain containers only. A file that holds
    anything else (a pickled object could run code when read) is a one-line error, not read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise _unloadable(path, kind, error) from None


def _unloadable(path: Path, kind: str, error: Exception) -> UserError:
    """Why ``torch.load(weights_only=True)`` could not read ``path``, in the user's terms."""
    # A class weights_only refuses ("Unsupported global" / "class"; torch would advise weights_only=False),
    # not a damaged file ("Unsupported operand").
    if isinstance(error, pickle.UnpicklingError) and re.search(r"unsupported (global|class)", str(error), re.I):
        return UserError(f"{path}: refused: this {kind} holds pickled Python objects besides tensors, which could "
                         "run code when read; save plain tensors (a state_dict) instead")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6 (or with _use_new_zipfile_serialization=False)
    # a pickle stream, which starts with the protocol opcode. Anything else is a text file, a picture...
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return UserError(f"{path}: not a PyTorch {kind} (torch.save writes a zip archive and this file is not one)")
    damaged = "damaged: " if isinstance(error, pickle.UnpicklingError) else ""
    return UserError(f"{path}: not a loadable {kind} ({damaged}{first_line(error)})")
