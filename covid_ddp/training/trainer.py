"""Distributed training of the chest X-ray CNN, driven by accelerate: ``train(config)``, the run top
to bottom (any launcher: ``commands/train.py``; without a usable GPU, CPU processes).

Every rank trains on its shard of each global batch (``engine.train_one_epoch``),
evaluates its shard of the validation/test parts (combined exactly with
``gather_for_metrics``) and steps the LR schedule with the same, globally reduced
validation loss. Only the main process prints, logs to TensorBoard and writes the run
folder (``run_folder.RunFolder``); any failure there ends every rank together.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from ..cli import say
from ..data.confounding import table_of
from ..data.format import RawData, fingerprint, to_binary
from ..data.sets import fetch_dataset, load_dataset
from ..data.splits import Split, make_split, split_groups
from ..data.tensors import blank_rows
from ..errors import UserError
from ..metrics import DEFAULT_THRESHOLD
from ..run_files import METRICS_FILE, TENSORBOARD_DIR, WEIGHTS_FILE
from ..seeding import seed_global_generators
from . import checkpoint as ckpt
from .board import Logger
from .config import TrainConfig, settle_batches
from .engine import Evaluation, PreparedRun, evaluate, train_one_epoch
from .finish import finish
from .preparation import announce_sources, apply_recipe_changes, check_parts, new_model, prepare_run
from .provenance import resident_memory_mb
from .record import run_config
from .run_folder import RunFolder, describe_changes, recorded_batch_size
from .recipe import refuse_swaps
from .selection import Selection
from .session import Session
from .tracker_choice import TENSORBOARD, tracker_names
from .trackers import params_of


@dataclass(frozen=True)
class TrainedRun:
    """What ``train`` returns, on every process of the job."""

    folder: Path  # the run folder
    weights: Path  # its weights file (the sidecar JSON beside it names the threshold and the model)
    metrics: dict  # the test split's metrics at the run's threshold, as metrics.json's "test"
    config: TrainConfig  # as the run settled it: batch size, image size, precision

    @property
    def threshold(self) -> float:
        return self.metrics["threshold"]


AfterTraining = Callable[[TrainedRun, RawData, Split], None]


def train(config: TrainConfig, after: AfterTraining | None = None) -> TrainedRun:
    """Train, checkpoint every epoch, test once, write the run folder. Called on every process of
    a job (any launcher, or ``accelerate.notebook_launcher``); each returns the same run. A run
    that ``--resume auto`` finds finished is returned as it is, untouched.

    ``after(run, data, split)`` runs on the main process once the job's processes have let go of
    each other, for a run trained now (covid-ddp-train audits it and writes its model card there)."""
    with Session.start(config) as session:
        job = set_up_job(session)
        with session.run_folder(job.config) as folder:
            session.print(f"covid-ddp-train: {session.describe()}; run folder {folder.path}")
            if folder.finished:
                # A finished run is what was asked for, or refused, exactly as an unfinished one is.
                folder.check_resume(job.config, fingerprint(job.data), session.forced)
                if folder.changes:
                    raise UserError(f"{folder.path} is finished ({folder.finished}): "
                                    f"{describe_changes(folder.changes)} "
                                    "would change no step of it; pass a larger --epochs to train on with them, or "
                                    "another --output-dir for a new run")
                session.print(f"{folder.path} is finished ({folder.finished}): nothing to do")
                metrics = session.on_main(lambda: ckpt.recorded_test_metrics(folder.path),
                                          f"read {folder.path / METRICS_FILE}")
                session.shut_down()
            else:
                metrics = _train_in(folder, job, session)
            run = TrainedRun(folder.path, folder.path / WEIGHTS_FILE, metrics, job.config)
            trained_now, main_process = not folder.finished, session.is_main_process
    # Once the job is over and its folder let go: what ``after`` does (or fails at) is not the job's.
    with session.closing_trackers():  # (then they log the run's files, the card and audit included)
        if after is not None and trained_now and main_process:
            after(run, job.data, job.split)
    return run


@dataclass
class Job:
    """What a run trains on, settled before its folder is claimed: whatever the data, the split or
    the model refuses is refused there, and the folder is left as it was found."""

    config: TrainConfig  # with the batch size and image size the data settled
    data: RawData
    targets: np.ndarray
    split: Split
    model: torch.nn.Module  # built (from --init-weights, if given), not yet prepared by accelerate
    batch_note: str  # why the batch size changed, if it did


def set_up_job(session: Session) -> Job:
    config, accelerator = session.config, session.accelerator
    data = load_training_data(session, config)
    targets = to_binary(data.labels)
    # The main process splits for all (the same split everywhere, and scikit-learn imported once).
    split = session.on_main(lambda: make_split(targets, config.split_plan(), data.meta, split_groups(data)),
                            "split the data")
    refuse_blank_training(session, data, split.train)
    config = keep_the_resumed_batch(session, config)
    config, batch_note = settle_batches(config, len(split.train), accelerator.num_processes, accelerator.device.type)
    config = dataclasses.replace(config, image_size=data.image_size)  # the data's: what a resume compares
    check_parts(config, split, accelerator.num_processes)
    return Job(config, data, targets, split, new_model(config, data, split, accelerator.device), batch_note)


def keep_the_resumed_batch(session: Session, config: TrainConfig) -> TrainConfig:
    """A resume without --batch-size goes on with the global batch its run trained with, which the
    processes it resumes on must share evenly (a default batch is settled for the process count)."""
    if config.batch_size is not None:
        return config
    recorded = session.on_main(lambda: recorded_batch_size(config), "read the run to resume")
    if recorded is None:
        return config
    processes = session.accelerator.num_processes
    if recorded % processes:
        counts = [count for count in range(1, min(recorded, 64) + 1) if recorded % count == 0]
        raise UserError(f"the run to resume trained with a global batch of {recorded}, which {processes} processes "
                        f"cannot share evenly; resume it on {', '.join(map(str, counts))} processes, or pass "
                        f"--resume-with-changes --batch-size with a multiple of {processes}")
    return dataclasses.replace(config, batch_size=recorded)


def _train_in(folder: RunFolder, job: Job, session: Session) -> dict:
    config, data, split, accelerator = job.config, job.data, job.split, session.accelerator
    folder.check_resume(config, fingerprint(data), session.forced)
    refuse_swaps(folder.changes)  # before the checkpoint's states are loaded into other parts
    folder.keep_split(split)
    run = prepare_run(config, data, job.targets, split, accelerator, model=job.model)
    job.model = None  # the run holds it, wrapped: released with the run before shutting down
    progress = ckpt.TrainingProgress()
    state = ckpt.TrainingState(accelerator, run.model, run.optimizer, run.scheduler, progress, average=run.average)
    selection = Selection.for_run(config.select_by, config.early_stop, has_validation=len(split.val) > 0)
    if not folder.restore(state, config.epochs):  # another process count: its random states do not apply
        seed_global_generators(config.seed, "dropout", progress.epoch + 1, accelerator.process_index)
    if "--select-by" in folder.changes:
        selection.check_kept(progress.history, state.best.epoch, folder.changes["--select-by"][0])
    apply_recipe_changes(run, config, folder.changes, accelerator)
    folder.write_config(run_config(config, accelerator, data, split, folder, run))  # once the resume holds
    if session.is_main_process:
        if job.batch_note:
            say(f"covid-ddp-train: {job.batch_note}")
        if split.copy_groups[0]:
            say(f"covid-ddp-train: {split.copy_groups[0]} group(s) of copies of one image ({split.copy_groups[1]} "
                "images) kept together, each in one part of the split")
        announce_sources(table_of(data.meta, job.targets, split.train))
    board = start_logging(session, folder, data.images, job.targets, split, config)

    monitored = None
    with folder.stop_on_signal(state) as stopper:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if selection.stops_after(progress.history):  # --early-stop (also a resumed run that had stopped)
                break
            record, monitored = run_epoch(run, accelerator, config, epoch, progress, stopper, board)
            progress.end_epoch(record)
            if selection.best_epoch(progress.history) == epoch:
                state.best.keep(accelerator.unwrap_model(run.scored_model(), keep_torch_compile=False), epoch)
            saved = folder.save_checkpoint(state, epoch)
            folder.stop_if_signalled(stopper, f"after epoch {epoch}; saved {saved}")

    test_metrics = finish(run, folder, accelerator, config, monitored, board, progress, selection, state.best,
                          data.meta)
    del run, state  # the DDP wrapper holds the process group: release it before shutting down
    session.shut_down()
    return test_metrics


# --- start-up ---------------------------------------------------------------------------------


def load_training_data(session: Session, config: TrainConfig) -> RawData:
    """The main process downloads what is missing, then the first process of every other machine
    (whose cache may be a disk of its own); then every process reads its copy, and all check
    that they hold the same files."""
    def fetch():
        fetch_dataset(config.dataset, config.data_dir, config.mcfam_url, config.pins(), into_data_dir=config.download)

    # Patient: the others wait for a download however long it takes, not --dist-timeout.
    session.on_main(fetch, "download the data", patient=True)
    accelerator = session.accelerator
    session.on_every(fetch, "download the data", here=accelerator.is_local_main_process and not accelerator.is_main_process,
                     patient=True)
    data = session.on_every(lambda: load_dataset(
        config.dataset, config.data_dir, config.synthetic_size, config.seed, config.mcfam_url, config.pins(),
        config.image_size),
        "read the data")
    session.same_everywhere(fingerprint(data), "data files")
    return data


def refuse_blank_training(session: Session, data: RawData, train_rows: np.ndarray) -> None:
    """A training part of blank images (each a single gray level) has nothing to learn: a run on it
    would end at ROC AUC 0.5 with no word. All blank: refused (on every rank: the same count);
    some: one warning line."""
    blank = session.on_main(lambda: len(blank_rows(data.images, train_rows)), "look for blank images")
    if blank == len(train_rows):
        raise UserError(f"all {blank} training images are blank (each a single gray level): there is nothing to "
                        "learn from; check the data folder")
    if blank and session.is_main_process:
        say(f"covid-ddp-train: warning: {blank} of the {len(train_rows)} training images are blank (each a single "
            "gray level); covid-ddp-prepare names such files")


# --- an epoch ---------------------------------------------------------------------------------


def run_epoch(run: PreparedRun, accelerator: Accelerator, config: TrainConfig, epoch: int,
              progress: ckpt.TrainingProgress, stopper=None, board: Logger | None = None) -> tuple[dict, Evaluation]:
    """Train one epoch, evaluate, step the LR schedule; returns the epoch's history record and evaluation."""
    started = time.perf_counter()
    if progress.step == 0:
        # Dropout masks differ per rank and epoch and depend only on (seed, epoch, rank), so a
        # resumed epoch is exact. (Resuming inside an epoch, the checkpoint's random state is restored.)
        seed_global_generators(config.seed, "dropout", epoch, accelerator.process_index)
    train_loss, images_per_s = train_one_epoch(run.model, run.optimizer, run.train_loader, accelerator, config,
                                               epoch, progress, stopper, run.after_optimizer_step)
    monitored = evaluate(run.model_to_validate(), run.monitor_loader, accelerator, stopper, (epoch, progress.step))
    run.step_schedule_after_epoch(monitored.loss)
    record = {"epoch": epoch, "train_loss": train_loss, **_monitored_figures(run.monitor_name, monitored),
              "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": images_per_s, "rss_mb": resident_memory_mb(),
              "seconds": round(time.perf_counter() - started, 3)}  # training + validation (resumed: since then)
    accelerator.log({"epoch": epoch, **{f"epoch/{k}": v for k, v in record.items() if k != "epoch" and v is not None}},
                    step=run.step_at_end_of(epoch))
    if board is not None:  # main process only; no collectives inside
        board.epoch(accelerator.unwrap_model(run.scored_model(), keep_torch_compile=False), monitored, run.monitor_name,
                    epoch)
    accelerator.print(_monitored_line(run.monitor_name, record))
    return record, monitored


def _monitored_figures(monitor_name: str, monitored: Evaluation) -> dict:
    """Validation: loss and ROC AUC, which need no threshold (the run's is chosen at the end, on
    the final weights). --val-size 0 monitors the test split at the run's threshold, 0.5."""
    if monitor_name == "Validation":
        return {"validation_loss": monitored.loss, "validation_auc": monitored.roc_auc}
    return {"test_loss": monitored.loss, "test_accuracy": monitored.accuracy(DEFAULT_THRESHOLD)}


def _monitored_line(monitor_name: str, record: dict) -> str:
    if monitor_name == "Validation":
        auc = record["validation_auc"]
        shown = "n/a (one class)" if auc is None else f"{auc:.4f}"
        return f"Validation set: Average loss: {record['validation_loss']:.4f}, ROC AUC: {shown} [COVID Detection]"
    return (f"Test set: Average loss: {record['test_loss']:.4f}, Accuracy: {100 * record['test_accuracy']:.2f}% "
            f"at threshold {DEFAULT_THRESHOLD:.3f} [COVID Detection]")


# --- TensorBoard and the other trackers -------------------------------------------------------


def start_logging(session: Session, folder: RunFolder, images, targets, split, config: TrainConfig) -> Logger | None:
    """TensorBoard in <run>/tensorboard, on the main process (its hyper-parameters go in at the
    end, next to the final metrics: see ``board.Logger.final``), and --log-with's other trackers."""
    accelerator = session.accelerator
    tensorboard = TENSORBOARD in tracker_names(config.log_with)
    if tensorboard:  # first: init_trackers starts every tracker it holds
        # Both: set_directories keeps the placeholder logging_dir given at start-up (which put the
        # events of a default runs/<timestamp> run in runs/tensorboard).
        accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = str(folder.path)
        session.on_main(lambda: accelerator.init_trackers(TENSORBOARD_DIR),
                        f"start TensorBoard logging in {folder.path / TENSORBOARD_DIR}")
    session.start_trackers(folder.path, params_of(config.to_dict(), accelerator.num_processes,
                                                  accelerator.mixed_precision, folder.path),
                           resumed=folder.resume_from is not None)
    if not tensorboard:
        return None
    return Logger.for_run(accelerator, images, targets, split.val if len(split.val) else split.test,
                          config.log_images_every)
