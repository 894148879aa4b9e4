"""A training job's run folder, as every rank of the job sees it.

::

    with RunFolder.open(accelerator, config) as folder:  # one path for all ranks, locked, checked shared
        folder.check_resume(config, data_fingerprint)     # --resume: the same experiment, or changes asked for
        folder.keep_split(split)
        folder.write_config(run_config)                   # config.json, from the start
        folder.restore(state, epochs)                     # --resume: load the chosen checkpoint
        with folder.stop_on_signal(state) as stopper:     # SIGINT/SIGTERM: an agreed checkpoint, then exit
            ... folder.save_checkpoint(state, epoch) ...
        folder.write_outputs(...)                         # threshold, weights, metrics

Every method is called by every rank at the same point. The main process does the file
work through ``distributed.on_main_process``, so a failure there (a full disk, a folder
that is a file, a filesystem without ``flock``) stops every rank in the same call with
one message. The other ranks only write their share of a checkpoint (each process's
random state), and read the folder on resume: it must be on a filesystem
every machine of the job mounts at the same path, which ``open`` checks.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_path, cannot_write, save_safetensors, save_torch, write_json
from ..models.weights import sidecar_path, write_sidecar
from ..predictions import PREDICTIONS_FILE, write_predictions
from ..run_files import (CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE, METRICS_FILE, SPLITS_FILE, TENSORBOARD_DIR,
                         WEIGHTS_FILE, WEIGHTS_SAFETENSORS)
from . import checkpoint as ckpt
from .config import TrainConfig, changed_flags, default_output_dir
from .distributed import JobFailed, gather_values, on_every_process, on_main_process
from .interrupt import GracefulStop, StopRequested, TrainingInterrupted, agreed_signal
from .selection import Selection


class RunLock:
    """An exclusive lock on a run folder, held by the main process for the whole run.

    Two runs writing one folder would interleave checkpoints and overwrite each other's
    weights; the second one refuses instead. ``flock`` is released by the kernel when the
    process dies, so a killed run never leaves a stale lock behind. The lock file holds a
    token of this job, which the other ranks read to prove they see the same folder.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self._handle = None

    def acquire(self, token: str = "") -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.output_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().split("\n")[0]
            handle.close()
            raise UserError(f"{self.output_dir} is in use by another covid_ddp run{f' ({owner})' if owner else ''}; "
                            "wait for it to finish or choose another --output-dir") from None
        except OSError:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"{socket.gethostname()} pid {os.getpid()}\n{token}\n")
        handle.flush()
        os.fsync(handle.fileno())  # on NFS, what other machines read is what reached the server
        self._handle = handle

    def release(self) -> None:
        """Unlock; a folder the failed run left empty is removed (nothing half-made stays behind).

        The lock file itself stays otherwise: removed while locked, a run that opened it just
        before could lock the removed file while a third locks a new one.
        """
        if self._handle is None:
            return
        lock_file = self.output_dir / LOCK_FILE
        left = {p.name for p in self.output_dir.iterdir()} - {LOCK_FILE}
        no_run = not left & (RUN_FILES | RUN_FOLDERS)  # only the user's files, if any: the lock goes too
        if no_run:
            lock_file.unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        if no_run and not left:
            with contextlib.suppress(OSError):  # another run may have just created something there
                self.output_dir.rmdir()


class RunFolder:
    """The folder of one training job; build it with ``RunFolder.open``."""

    def __init__(self, accelerator, path: Path, resume_from: Path | None, finished: str, keep: int):
        self.accelerator, self.path, self.keep = accelerator, path, keep
        self.resume_from = resume_from  # the checkpoint this run continues, chosen by the main process
        self.finished = finished  # --resume auto on a run that has nothing left to do: why ("" otherwise)
        self.resumes: list[dict] = []  # config.json's record of every resume of this run, and its changes
        self.changes: dict[str, tuple] = {}  # this resume's changed flags (--resume-with-changes)

    @classmethod
    @contextlib.contextmanager
    def open(cls, accelerator, config: TrainConfig):
        """Settle the folder (the main process decides: the same absolute path for every rank),
        lock it, choose the checkpoint to resume, and check that every rank sees it."""
        path = Path(on_main_process(accelerator, lambda: str(choose_path(config)), "choose the run folder"))
        lock = RunLock(path) if accelerator.is_main_process else None
        try:
            token, resume_from, finished = on_main_process(accelerator, lambda: _claim(path, lock, config),
                                                           f"lock the run folder {path}")
            on_every_process(accelerator, lambda: _check_shared(path, token), f"read {path / LOCK_FILE}",
                             here=not accelerator.is_main_process)
            try:
                yield cls(accelerator, path, Path(resume_from) if resume_from else None, finished,
                          config.keep_checkpoints)
            except BaseException:
                if lock is not None and resume_from is None:
                    _forget_unsaved_run(path)
                raise
        finally:
            if lock is not None:
                lock.release()

    # --- the run's life ----------------------------------------------------------------------

    def check_resume(self, config: TrainConfig, data_fingerprint: str, forced: frozenset = frozenset()) -> None:
        """A resume continues the same experiment: the flags that change the result
        (``config.RESULT_FLAGS``) and the data's content must be those of the run's config.json,
        unless ``--resume-with-changes`` asks otherwise (config.json then records the changes).
        ``forced``: flags the hardware changed unasked (auto's precision): recorded, not refused."""
        if self.resume_from is None:
            return
        self.resumes, self.changes = on_main_process(
            self.accelerator, lambda: _check_resume(self.path, self.resume_from, config, data_fingerprint, forced),
            f"read {self.path / CONFIG_FILE}")

    def write_config(self, run_config: dict) -> None:
        """config.json: the resolved configuration, written when training starts (a resume is checked against it)."""
        on_main_process(self.accelerator, lambda: write_json(self.path / CONFIG_FILE,
                                                             {**run_config, "resumes": self.resumes}),
                        f"write {self.path / CONFIG_FILE}")

    def keep_split(self, split) -> None:
        """splits.npz: the rows of each part; a resume must use the split the run trained on."""
        on_main_process(self.accelerator, lambda: _keep_split(self.path, split, self.resume_from is not None),
                        f"write {self.path / SPLITS_FILE}")

    def restore(self, state: ckpt.TrainingState, epochs: int) -> bool:
        """Load ``resume_from`` (weights, optimizer, schedule, progress, random states) on every rank.

        False when this rank's random state could not be restored (the checkpoint was written by
        another number of processes): the caller seeds it afresh. True otherwise.
        """
        if self.resume_from is None:
            return True
        random_state_restored = on_every_process(self.accelerator, lambda: _load_state(state, self.resume_from),
                                                 f"read checkpoint {self.resume_from}")
        progress = state.progress
        where = f"epoch {progress.epoch} done" + (f", {progress.step} steps of epoch {progress.epoch + 1}"
                                                  if progress.step else "")
        self.accelerator.print(f"Resumed from {self.resume_from} ({where})")
        if progress.epoch > epochs:
            raise UserError(f"{self.resume_from} is already at epoch {progress.epoch} of --epochs {epochs}; "
                            "pass a larger --epochs to train longer")
        return random_state_restored

    def save_checkpoint(self, state: ckpt.TrainingState, epoch: int, step: int = 0) -> Path:
        """``state`` saved into ``<name>.tmp``, renamed once every rank has written its share."""
        final = ckpt.checkpoint_path(self.path, epoch, step)
        partial = final.with_name(final.name + ".tmp")
        what = f"write checkpoint {final}"
        on_main_process(self.accelerator, lambda: _empty_folder(partial), what)
        try:
            on_every_process(self.accelerator, lambda: _save_state(state, partial, final), what)
        except JobFailed as failure:
            if self.accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            raise JobFailed(f"{failure}; the previous checkpoint is kept: free some space or choose another "
                            f"--output-dir, then rerun with --resume auto") from None
        on_main_process(self.accelerator, lambda: _publish(partial, final, self.path, self.keep), what)
        return final

    @contextlib.contextmanager
    def stop_on_signal(self, state: ckpt.TrainingState):
        """SIGINT/SIGTERM stop training at the next agreed step: checkpoint, then exit 128 + signal.
        A signal that came after the last agreed step of the last epoch stops the run before
        its final stage (that epoch's checkpoint is saved): it is not dropped."""
        with GracefulStop() as stopper:
            try:
                yield stopper
            except StopRequested as stop:
                saved = self.save_checkpoint(state, stop.epoch, stop.step)
                self._interrupted(stop.signum, f"at epoch {stop.epoch}, step {stop.step}; saved {saved}")
            late = max(gather_values(self.accelerator, stopper.signum))
            if late:
                self._interrupted(late, "after the last epoch, whose checkpoint is saved")

    def stop_if_signalled(self, stopper: GracefulStop, where: str) -> None:
        """Collective, at an epoch's end: a signal that came during its validation's last batch, its
        TensorBoard figures or its checkpoint write stops the run now, with that checkpoint, not
        some steps into the next epoch (torchrun kills its workers 30 s after its SIGTERM)."""
        signum = agreed_signal(self.accelerator, stopper.signum)
        if signum:
            self._interrupted(signum, where)

    def _interrupted(self, signum: int, where: str):
        raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} {where}. To continue, run the same "
                                  f"command with --resume auto --output-dir {self.path}", signum) from None

    def write_outputs(self, decision: dict, weights: dict, metrics: dict, board=None,
                      predictions: Callable[[], str] | None = None) -> Path:
        """The finished run's files, by the main process, metrics.json last: its presence marks a
        finished run. ``predictions()``: the test split's predictions.csv text."""
        weights_path = self.path / WEIGHTS_FILE

        def write() -> None:
            if board is not None:
                board()
            write_sidecar(weights_path, decision)  # before the weights it belongs to
            save_torch(weights_path, weights)
            # The same tensors without a pickle, for any framework; the network in its header too.
            save_safetensors(self.path / WEIGHTS_SAFETENSORS, weights, {
                "format": "pt", "covid_ddp_model": json.dumps(decision.get("model") or {}),
                "threshold": f"{decision['threshold']:.9g}"})
            if predictions is not None:
                write_predictions(self.path, predictions())
            write_json(self.path / METRICS_FILE, metrics)

        on_main_process(self.accelerator, write, f"write the outputs in {self.path}")
        return weights_path


# --- what the main process does for all ---------------------------------------------------------


def choose_path(config: TrainConfig) -> Path:
    """The run folder as an absolute path: relative paths and the default runs/<timestamp> are
    resolved here, on the main process, so every machine of the job uses the same one."""
    if config.output_dir:
        return Path(config.output_dir).resolve()
    if config.resume not in (None, "latest", "auto"):
        return Path(config.resume).resolve().parent.parent
    if config.resume:
        raise UserError(f"--resume {config.resume} needs --output-dir: the run folder whose checkpoints to continue")
    return default_output_dir(datetime.datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()


def recorded_batch_size(config: TrainConfig) -> int | None:
    """The global batch the run that ``config`` resumes trained with (None: no run to resume, or
    none recorded). A resume keeps it on any process count: the default batch depends on the
    count (``config.batch_size_for``), the data order of the run does not."""
    recorded = _recorded_flag(config, "batch_size")
    return recorded if isinstance(recorded, int) and recorded > 0 else None


def recorded_precision(config: TrainConfig) -> str | None:
    """The precision the run that ``config`` resumes trained in ('no', 'fp16', 'bf16'), or None."""
    recorded = _recorded_flag(config, "mixed_precision")
    return recorded if recorded in ("no", "fp16", "bf16") else None


def _recorded_flag(config: TrainConfig, name: str):
    """A flag's value in the config.json of the run ``config`` resumes (None: no run to resume, or
    no such record). Read-only: the folder is claimed later."""
    if not config.resume:
        return None
    path = choose_path(config)
    if not path.is_dir() or _resume_point(path, config) is None:
        return None
    try:
        return json.loads((path / CONFIG_FILE).read_text())["config"][name]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the resume check names what is wrong with the record


def _claim(path: Path, lock: RunLock, config: TrainConfig) -> tuple[str, str | None, str]:
    """Lock the folder and decide what this run does there: (token, checkpoint to resume, why the
    run is already finished or "")."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--output-dir {path} is a file, not a folder; choose another --output-dir")
    token = uuid.uuid4().hex
    lock.acquire(token)
    for stale in path.glob(f"{CHECKPOINTS_DIR}/*.tmp"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    resume_from = _resume_point(path, config)
    done = ckpt.is_finished_run(path)
    if resume_from is None and done:
        if not config.overwrite:
            unfinished = "" if (path / METRICS_FILE).exists() else \
                " (its outputs are incomplete: --resume auto finishes them)"
            raise UserError(f"{path} holds a finished run{unfinished}; choose another --output-dir, pass "
                            "--overwrite, or --resume latest with a larger --epochs")
        clear_run(path)
    finished = _finished(path, resume_from, config)
    if finished and config.resume != "auto":
        raise UserError(f"{resume_from} is already at epoch {ckpt.epochs_done(resume_from)} of --epochs "
                        f"{config.epochs} ({finished}); pass a larger --epochs"
                        f"{' or --early-stop' if config.early_stop else ''} to train longer")
    return token, str(resume_from) if resume_from else None, finished


def _finished(path: Path, resume_from: Path | None, config: TrainConfig) -> str:
    """Why the run to resume has nothing left to do, or ""."""
    if resume_from is None or not (path / METRICS_FILE).exists():
        return ""
    if ckpt.epochs_done(resume_from) >= config.epochs:
        return f"--epochs {config.epochs} reached"
    return "stopped early" if _stopped_early(path, config) else ""


def _stopped_early(path: Path, config: TrainConfig) -> bool:
    """The finished run's history meets --early-stop as this command gives it (a larger patience
    continues the run)."""
    try:
        history = json.loads((path / METRICS_FILE).read_text())["history"]
    except (OSError, ValueError, KeyError):
        return False
    return Selection.for_run(config.select_by, config.early_stop, has_validation=True).stops_after(history)


def _resume_point(path: Path, config: TrainConfig) -> Path | None:
    """--resume latest: the newest complete checkpoint (one is needed); auto: the same, or None
    for a new run; a folder: that checkpoint."""
    if config.resume is None:
        return None
    if config.resume in ("latest", "auto"):
        found = ckpt.complete_checkpoints(path)
        if not found and config.resume == "latest":
            raise UserError(f"--resume latest: no complete checkpoint in {path / CHECKPOINTS_DIR}")
        return found[-1] if found else None
    return ckpt.checked_checkpoint(Path(config.resume))


def _check_shared(path: Path, token: str, patience_s: float = 5.0) -> None:
    """The main process's token in <run>/.lock, read from here (a few seconds allowed for a
    network filesystem's attribute cache to see the new file)."""
    deadline = time.monotonic() + patience_s
    while token not in _read_or_empty(path / LOCK_FILE) and time.monotonic() < deadline:
        time.sleep(0.2)
    if token not in _read_or_empty(path / LOCK_FILE):
        raise UserError(f"the run folder {path} is not shared with the main process: {socket.gethostname()} does "
                        "not see its files there. A job on several machines needs --output-dir on a filesystem "
                        "that every machine mounts at the same path (NFS, Lustre, ...)")


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _forget_unsaved_run(path: Path) -> None:
    """A new run that failed before its first checkpoint (a refusal once the data was read, a NaN
    loss in epoch 1, a full disk) leaves the folder as it found it: nothing it wrote could be
    resumed, and a config.json or splits.npz without a checkpoint would only mislead. (Its lock
    goes with the folder, if nothing else is there.) A run with a checkpoint keeps everything."""
    if not ckpt.complete_checkpoints(path):
        clear_run(path)


RUN_FILES = {WEIGHTS_FILE, WEIGHTS_SAFETENSORS, sidecar_path(WEIGHTS_FILE).name, METRICS_FILE, CONFIG_FILE,
             SPLITS_FILE, PREDICTIONS_FILE}
RUN_FOLDERS = {CHECKPOINTS_DIR, TENSORBOARD_DIR}


def clear_run(output_dir: Path) -> None:
    """Remove what a run writes (and nothing else: the folder may hold the user's files)."""
    for name in RUN_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(Path(output_dir) / name, ignore_errors=True)


def _check_resume(path: Path, checkpoint: Path, config: TrainConfig, data_fingerprint: str,
                  forced: frozenset = frozenset()) -> tuple[list, dict]:
    """(config.json's resumes with this one added, this resume's changes asked for) or a one-line refusal."""
    config_path = path / CONFIG_FILE
    if not config_path.is_file():  # a run folder of an earlier version, stopped before its end
        return [], {}
    try:
        recorded = json.loads(config_path.read_text())
        flags, data = recorded["config"], recorded.get("data", {})
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{config_path}: not a covid_ddp run configuration ({type(error).__name__}: {error}); "
                        "restore it, or start a new run") from None
    changes = changed_flags(flags, config)
    if data.get("fingerprint") not in (None, data_fingerprint):
        changes["data"] = (data["fingerprint"], data_fingerprint)
    asked = {name: values for name, values in changes.items() if name not in forced}
    if asked and not config.resume_with_changes:
        listed = describe_changes(asked)
        raise UserError(f"--resume: {listed}: the run in {path} was trained otherwise (its {CONFIG_FILE}), so "
                        "the resumed run would be another experiment; resume with the run's flags, or pass "
                        "--resume-with-changes to change them on purpose")
    reshaped = sorted({"--batch-size", "--grad-accum-steps", "data"} & set(changes))
    if reshaped and ckpt.inside_an_epoch(checkpoint):
        raise UserError(f"--resume {checkpoint}: {', '.join(reshaped)} cannot change inside an epoch (its steps "
                        "are counted in batches of the old size); resume from an epoch's checkpoint "
                        f"({CHECKPOINTS_DIR}/epoch_NNN) instead")
    record = {"from": checkpoint.name, "changed": {name: list(values) for name, values in changes.items()}}
    return [*recorded.get("resumes", []), record], asked


def describe_changes(changes: dict[str, tuple]) -> str:
    """The flags (and data) a resume would change, each with the run's own value."""
    return ", ".join(_describe_change(name, old, new) for name, (old, new) in changes.items())


def _describe_change(name: str, old, new) -> str:
    if name == "data":
        return "other data files (their sha256 differ)"
    if name == "--mixed-precision":  # recorded as it ran: chosen by auto or the accelerate config, maybe
        return (f"the precision {new} (the run's: {old}; pass --mixed-precision {old} to train as it did, "
                "where this hardware can)")
    return f"{name} {new} (the run's: {old})"


def _keep_split(output_dir: Path, split, resuming: bool) -> None:
    """Write splits.npz; when resuming, refuse a split other than the one the run trained on,
    or its test images would have been trained on in the epochs before."""
    path = Path(output_dir) / SPLITS_FILE
    if resuming and path.is_file():
        saved = ckpt.read_splits(path)
        if any(not np.array_equal(saved.get(part), rows) for part, rows in split.as_arrays().items()):
            raise UserError(f"{path}: the run was trained on another train/val/test split; resume with the split "
                            f"flags it started with (see {Path(output_dir) / CONFIG_FILE} or its first command)")
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **split.as_arrays())


def _load_state(state: ckpt.TrainingState, checkpoint: Path) -> bool:
    try:
        return state.load(checkpoint)
    except RuntimeError as error:
        if "Unexpected key(s)" in str(error) or "Missing key(s)" in str(error):
            raise UserError(f"{checkpoint}: its model does not fit this version of covid_ddp (a checkpoint of an "
                            "earlier version holds pixel_mean/pixel_std); resume it with the version that wrote it, "
                            "or start a new run") from None
        raise


def _empty_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _save_state(state: ckpt.TrainingState, partial: Path, final: Path) -> None:
    """This rank's share of the checkpoint (the main process writes the model and optimizer)."""
    try:
        state.save(partial)
    except UserError:  # files.save_torch already said what failed
        raise
    except Exception as error:
        raise cannot_write(final, error) from error


def _publish(partial: Path, final: Path, output_dir: Path, keep: int) -> None:
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    kept = ckpt.complete_checkpoints(output_dir)
    for old in kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    if not ckpt.inside_an_epoch(final):  # a stop's checkpoint inside an epoch now finished: nothing resumes from it
        for stale in kept[-keep:]:
            if ckpt.inside_an_epoch(stale) and ckpt.epochs_done(stale) < ckpt.epochs_done(final):
                shutil.rmtree(stale, ignore_errors=True)
