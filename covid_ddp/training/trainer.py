"""Distributed training of the chest X-ray CNN, driven by accelerate.

Any launcher works, and without a usable GPU the processes train on the CPU by themselves::

    python launch/train.py --dataset synthetic                     # one process (GPU if present, else CPU)
    accelerate launch --config_file accelerate_config.yaml launch/train.py
    torchrun --nproc_per_node 2 launch/train.py                    # two processes, on GPUs or CPU (gloo)

Every rank trains on its shard of each global batch (``engine.train_one_epoch``),
evaluates its shard of the validation/test parts (combined exactly with
``gather_for_metrics``) and steps the LR schedule with the same, globally reduced
validation loss. Only the main process prints, logs to TensorBoard and writes the run
folder (``run_folder.RunFolder``); any failure there ends every rank together.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

from . import checkpoint as ckpt
from . import hardware, launcher_watch
from .board import Logger
from .cli import is_main_rank, run_cli, say
from .config import TrainConfig, parse_config, settle_batches
from .confounding import confounding_warning, format_table, table_of
from .data import (RawData, XrayDataset, blank_rows, collate_batch, dataset_tensors, fetch_dataset, fingerprint,
                   load_dataset, patient_ids, pixel_statistics, source_names, to_binary, wants_device)
from .distributed import (JobFailed, check_gpus_per_machine, check_launch, cpu_only, describe, exchange_before_group,
                          join_restarted_group, lost_another_process, on_every_process, on_main_process,
                          refuse_independent_launch, same_on_every_process)
from .engine import Evaluation, evaluate, train_one_epoch
from .errors import UserError, first_line
from .interrupt import stop_even_while_waiting
from .loader import TrainingLoader, balanced_weights
from .metrics import DEFAULT_THRESHOLD, binary_metrics, choose_threshold, per_source
from .model import ModelSpec, build_network, for_inference, weights_state_dict
from .audit import audit_after_training
from .backbones import load_initial_weights
from .model_card import refresh_model_card
from .provenance import environment_summary, resident_memory_mb
from .run_folder import RunFolder
from .selection import BestWeights, Selection
from .seeding import seed_global_generators
from .splits import Split, make_split
from .sync_batchnorm import convert_sync_batchnorm


def main(argv: list[str] | None = None) -> int:
    launcher_watch.arm("covid-ddp-train")  # (launch/train.py arms it earlier, before torch is imported)

    def command():
        # SIGTERM and Ctrl-C end start-up and the final stage in one line; the loop's own stop saves first.
        with stop_even_while_waiting("covid-ddp-train"):
            return train(parse_config(argv))

    return run_cli(command, prog="covid-ddp-train")


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


def train(config: TrainConfig) -> TrainedRun:
    """Train, checkpoint every epoch, test once, write the run folder. Called on every process of
    a job (any launcher, or ``accelerate.notebook_launcher``); each returns the same run. A run
    that ``--resume auto`` finds finished is returned as it is, untouched."""
    try:
        return _train(config)
    finally:
        # The job's accelerate state goes with it: the same Python process (a notebook) can train
        # again, or start several processes with notebook_launcher, which refuses while one is held.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _train(config: TrainConfig) -> TrainedRun:
    started = time.monotonic()
    accelerator, config = start_job(config)
    run_dir = None  # for the message below, once known
    try:
        job = set_up_job(accelerator, config)
        with RunFolder.open(accelerator, job.config) as folder:
            run_dir = folder.path
            accelerator.print(f"covid-ddp-train: {describe(accelerator)}; run folder {folder.path}")
            if folder.finished:
                accelerator.print(f"{folder.path} is finished ({folder.finished}): nothing to do")
                metrics = on_main_process(accelerator, lambda: ckpt.recorded_test_metrics(folder.path),
                                          f"read {folder.path / ckpt.METRICS_FILE}")
                shut_down(accelerator)
                return TrainedRun(folder.path, folder.path / ckpt.WEIGHTS_FILE, metrics, job.config)
            metrics = _train_in(folder, job, accelerator, started)
            return TrainedRun(folder.path, folder.path / ckpt.WEIGHTS_FILE, metrics, job.config)
    except Exception as error:
        shut_down(accelerator, barrier=False)  # the other ranks may not reach a barrier
        if lost_another_process(error):
            resume = f" Complete checkpoints are kept: rerun with --resume auto --output-dir {run_dir}" \
                if run_dir else ""
            raise JobFailed(f"another process of this job ended while this one waited for it ({first_line(error)}); "
                            f"its own output says why.{resume}") from None
        raise


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


def set_up_job(accelerator: Accelerator, config: TrainConfig) -> Job:
    data = load_training_data(accelerator, config)
    targets = to_binary(data.labels)
    # The main process splits for all (the same split everywhere, and scikit-learn imported once).
    split = on_main_process(accelerator, lambda: make_split(targets, config.split_plan(), data.meta), "split the data")
    refuse_blank_training(accelerator, data, split.train)
    config, batch_note = settle_batches(config, len(split.train), accelerator.num_processes, accelerator.device.type)
    config = dataclasses.replace(config, image_size=data.image_size)  # the data's: what a resume compares
    check_parts(config, split, accelerator.num_processes)
    return Job(config, data, targets, split, new_model(config, data, split, accelerator.device), batch_note)


def _train_in(folder: RunFolder, job: Job, accelerator: Accelerator, started: float) -> dict:
    config, data, split = job.config, job.data, job.split
    folder.check_resume(config, fingerprint(data))
    folder.keep_split(split)
    run = prepare_run(config, data, job.targets, split, accelerator, model=job.model)
    job.model = None  # the run holds it, wrapped: released with the run before shutting down
    progress = ckpt.TrainingProgress()
    state = ckpt.TrainingState(accelerator, run.model, run.optimizer, run.scheduler, progress)
    selection = Selection.for_run(config.select_by, config.early_stop, has_validation=len(split.val) > 0)
    if not folder.restore(state, config.epochs):  # another process count: its random states do not apply
        seed_global_generators(config.seed, "dropout", progress.epoch + 1, accelerator.process_index)
    _apply_recipe_changes(run, config, folder.changes, accelerator)
    folder.write_config(_run_config(config, accelerator, data, split, folder, run))  # once the resume holds
    if job.batch_note and accelerator.is_main_process:
        say(f"covid-ddp-train: {job.batch_note}")
    if accelerator.is_main_process:
        announce_sources(table_of(data.meta, job.targets, split.train))
    board = start_logging(accelerator, folder, data.images, job.targets, split, config)

    monitored = None
    with folder.stop_on_signal(state) as stopper:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if selection.stops_after(progress.history):  # --early-stop (also a resumed run that had stopped)
                break
            record, monitored = run_epoch(run, accelerator, config, epoch, progress, stopper, board)
            progress.end_epoch(record)
            if selection.best_epoch(progress.history) == epoch:
                state.best.keep(accelerator.unwrap_model(run.model, keep_torch_compile=False), epoch)
            folder.save_checkpoint(state, epoch)

    test_metrics = finish(run, folder, accelerator, config, monitored, board, progress, selection, state.best,
                          data.meta)
    del run, state  # the DDP wrapper holds the process group: release it before shutting down
    shut_down(accelerator)
    if accelerator.is_main_process:  # after the group is gone: no other process waits on these
        audit_after_training(config.audit, folder.path / ckpt.WEIGHTS_FILE, data, split.test, test_metrics["threshold"],
                             config.seed, run_seconds=time.monotonic() - started)
        refresh_model_card(folder.path, "covid-ddp-train")
    return test_metrics


# --- start-up ---------------------------------------------------------------------------------


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


def load_training_data(accelerator: Accelerator, config: TrainConfig) -> RawData:
    """The main process downloads what is missing, then the first process of every other machine
    (whose cache may be a disk of its own); then every process reads its copy, and all check
    that they hold the same files."""
    def fetch():
        fetch_dataset(config.dataset, config.data_dir, config.mcfam_url, config.pins(), into_data_dir=config.download)

    # Patient: the others wait for a download however long it takes, not --dist-timeout.
    on_main_process(accelerator, fetch, "download the data", patient=True)
    on_every_process(accelerator, fetch, "download the data",
                     here=accelerator.is_local_main_process and not accelerator.is_main_process, patient=True)
    data = on_every_process(accelerator, lambda: load_dataset(
        config.dataset, config.data_dir, config.synthetic_size, config.seed, config.mcfam_url, config.pins(),
        config.image_size),
        "read the data")
    same_on_every_process(accelerator, fingerprint(data), "data files")
    return data


@dataclass
class PreparedRun:
    """What the loop works with, after ``accelerator.prepare``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_loader: TrainingLoader  # not prepared by accelerate: it owns its order (loader.EpochBatches)
    monitor_loader: torch.utils.data.DataLoader  # validation, or test when --val-size 0
    test_loader: torch.utils.data.DataLoader
    monitor_name: str
    data_device: str  # where the uint8 set lives (--data-on-device)
    train_loader_kind: str  # 'device' (batches cut on the device) or 'DataLoader' (gathered in host memory)
    spec: ModelSpec  # the network and its input size, recorded beside the weights


def refuse_blank_training(accelerator: Accelerator, data: RawData, train_rows: np.ndarray) -> None:
    """A training part of blank images (each a single gray level) has nothing to learn: a run on it
    would end at ROC AUC 0.5 with no word. All blank: refused (on every rank: the same count);
    some: one warning line."""
    blank = on_main_process(accelerator, lambda: len(blank_rows(data.images, train_rows)), "look for blank images")
    if blank == len(train_rows):
        raise UserError(f"all {blank} training images are blank (each a single gray level): there is nothing to "
                        "learn from; check the data folder")
    if blank and accelerator.is_main_process:
        say(f"covid-ddp-train: warning: {blank} of the {len(train_rows)} training images are blank (each a single "
            "gray level); covid-ddp-prepare names such files")


def prepare_run(config: TrainConfig, data: RawData, targets: np.ndarray, split, accelerator: Accelerator,
                make_optimizer=hardware.make_optimizer, model: torch.nn.Module | None = None) -> PreparedRun:
    """Loaders, model (normalised with training-split statistics; ``new_model`` unless given),
    optimizer and LR schedule.

    ``make_optimizer(model, lr, device)`` builds the optimizer (the recipe's Adam; the
    gradient tests pass SGD, whose update shows the gradient's scale, which Adam hides).
    """
    # Decided once, on the main process: ranks with different free GPU memory still agree.
    # --workers gather batches in host memory: the set stays there.
    on_device = not config.workers and on_main_process(accelerator, lambda: wants_device(
        data.images, targets, accelerator.device, config.data_on_device), "place the data")
    images, targets_t = on_every_process(accelerator, lambda: dataset_tensors(  # a GPU may run out of memory
        data.images, targets, accelerator.device, on_device), "put the data on the device")
    train_loader, val_loader, test_loader = make_loaders(images, targets_t, split, config,
                                                         num_processes=accelerator.num_processes,
                                                         process_index=accelerator.process_index,
                                                         on_device=on_device, device=accelerator.device,
                                                         weights=training_weights(config, data, targets, split))
    model = model if model is not None else new_model(config, data, split, accelerator.device)
    spec = ModelSpec(config.model, data.image_size)
    # On its device before the optimizer sees it: fused Adam checks where the parameters are.
    optimizer = make_optimizer(model.to(accelerator.device), config.lr, accelerator.device)
    # Not passed to prepare(): accelerate's wrapper would step it once per process.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=config.lr_patience, factor=config.lr_factor)
    # The training loader is not prepared: it shards and orders its batches itself. The evaluation
    # loaders are, for gather_for_metrics to drop the padding of their last batch.
    model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
    placement = (str(images.device), "device" if on_device else "DataLoader")
    if val_loader is None:  # --val-size 0: the original's behaviour, the test loss drives the schedule
        return PreparedRun(model, optimizer, scheduler, train_loader, test_loader, test_loader, "Test", *placement, spec)
    return PreparedRun(model, optimizer, scheduler, train_loader, accelerator.prepare(val_loader), test_loader,
                    "Validation", *placement, spec)


def training_weights(config: TrainConfig, data: RawData, targets: np.ndarray, split) -> np.ndarray | None:
    """--balance-sources: each training row's chance of being drawn (None: every epoch a permutation)."""
    if not config.balance_sources:
        return None
    if data.meta is None or "dataset" not in data.meta:  # one source: the pairs are the two classes
        sources = np.zeros(len(targets), dtype=int)
    else:
        sources = data.meta["dataset"]
    return balanced_weights(sources[split.train], targets[split.train])


def make_loaders(images, targets, split, config: TrainConfig, *, num_processes: int, process_index: int,
                 on_device: bool, device: torch.device | None = None, weights: np.ndarray | None = None):
    """Training loader (shuffled, sharded) and evaluation loaders over one shared uint8 tensor.

    The training loader (``loader.TrainingLoader``) cuts batches on ``device`` when the set is
    ``on_device``, else gathers them in host memory and moves them there; the same shards either
    way. Evaluation always uses a DataLoader for accelerate to prepare: ``gather_for_metrics``
    needs accelerate's view of its last batch to drop the padding, which keeps evaluation exact.
    """
    check_parts(config, split, num_processes)

    def evaluation_loader(rows):
        return torch.utils.data.DataLoader(XrayDataset(images, targets, rows), batch_size=config.eval_batch_size,
                                           collate_fn=collate_batch)

    # Training drops the last partial global batch (the permutation changes every epoch, so every
    # image is still used): padding it, as DistributedSampler does, would make N processes train
    # on other images than 1 process. Evaluation keeps every image.
    train_loader = TrainingLoader(images, targets, split.train, config.batch_size, config.seed,
                                  device=images.device if device is None else device, on_device=on_device,
                                  process_index=process_index, num_processes=num_processes, weights=weights,
                                  workers=config.workers)
    val_loader = evaluation_loader(split.val) if len(split.val) else None
    return train_loader, val_loader, evaluation_loader(split.test)


def check_parts(config: TrainConfig, split, num_processes: int) -> None:
    """Every part can be shared by the processes, and the training part holds a whole batch (the
    batch sizes themselves are settled by ``config.settle_batches``)."""
    for name, rows in (("training", split.train), ("validation", split.val), ("test", split.test)):
        if 0 < len(rows) < num_processes or (name != "validation" and len(rows) < num_processes):
            raise UserError(f"the {name} part has {len(rows)} images, fewer than the {num_processes} processes; "
                            "use more data or fewer processes")

    if len(split.train) < config.batch_size:
        raise UserError(f"the training part has {len(split.train)} images, fewer than --batch-size {config.batch_size}")


def new_model(config: TrainConfig, data: RawData, split, device: torch.device) -> torch.nn.Module:
    """The run's network, seeded: identical initial weights on every rank."""
    seed_global_generators(config.seed, "weights")
    return build_model(config, ModelSpec(config.model, data.image_size), device,
                       pixel_statistics(data.images, split.train))


def build_model(config: TrainConfig, spec: ModelSpec, device: torch.device,
                normalization: tuple[float, float]) -> torch.nn.Module:
    """The network of ``spec`` (from --init-weights, if given) with the training split's intensity
    statistics, laid out for speed."""
    model = build_network(spec, dropout=config.dropout)
    if config.init_weights:
        initial = Path(config.init_weights)
        loaded = load_initial_weights(model, ckpt.refuse_non_finite(ckpt.load_plain(initial, "--init-weights file"),
                                                                    initial), config.init_weights)
        if is_main_rank():
            summed = (", its first convolution summed from 3 channels to 1"
                      if loaded["first_conv_summed_from_3_channels"] else "")
            say(f"--init-weights {config.init_weights}: {loaded['tensors']} tensors loaded{summed}; "
                f"a new two-class head ({loaded['head_replaced']})")
    model.set_normalization(*normalization)
    if config.sync_bn:
        model = convert_sync_batchnorm(model, device)
    # NHWC convolutions: faster training and evaluation on a 2-core CPU
    # (benchmarks/throughput.py), and the layout GPU tensor cores want.
    return model.to(memory_format=torch.channels_last)


def start_logging(accelerator: Accelerator, folder: RunFolder, images, targets, split,
                  config: TrainConfig) -> Logger | None:
    """TensorBoard in <run>/tensorboard, on the main process (its hyper-parameters go in at the
    end, next to the final metrics: see ``board.Logger.final``)."""
    # Both: set_directories keeps the placeholder logging_dir given at start-up (which put the
    # events of a default runs/<timestamp> run in runs/tensorboard).
    accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = str(folder.path)
    on_main_process(accelerator, lambda: accelerator.init_trackers(ckpt.TENSORBOARD_DIR),
                    f"start TensorBoard logging in {folder.path / ckpt.TENSORBOARD_DIR}")
    return Logger.for_run(accelerator, images, targets, split.val if len(split.val) else split.test,
                          config.log_images_every)


def announce_sources(table: dict | None) -> None:
    """The training images per source and class, and the confounding warning where a source holds
    one class (nothing for data without sources)."""
    if not table or len(table) < 2:
        return
    say(format_table(table, title="covid-ddp-train: training images (patients) per source and class"))
    warning = confounding_warning(table)
    if warning:
        say(f"covid-ddp-train: warning: {warning}")


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
                                               epoch, progress, stopper)
    monitored = evaluate(run.model, run.monitor_loader, accelerator)
    run.scheduler.step(monitored.loss)  # the same gathered loss on every rank -> the same LR everywhere
    record = {"epoch": epoch, "train_loss": train_loss, **_monitored_figures(run.monitor_name, monitored),
              "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": images_per_s, "rss_mb": resident_memory_mb(),
              "seconds": round(time.perf_counter() - started, 3)}  # training + validation (resumed: since then)
    accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch" and v is not None}, step=epoch)
    if board is not None:  # main process only; no collectives inside
        board.epoch(accelerator.unwrap_model(run.model, keep_torch_compile=False), monitored, run.monitor_name, epoch)
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


# --- the end ----------------------------------------------------------------------------------


def finish(run: PreparedRun, folder: RunFolder, accelerator: Accelerator, config: TrainConfig,
           monitored: Evaluation | None, board: Logger | None, progress: ckpt.TrainingProgress,
           selection: Selection, best: BestWeights, meta: dict | None = None) -> dict:
    """Ship the selected epoch's weights, pick the threshold on validation, score the test split
    once with it, write the run's outputs.

    The threshold and metrics.json describe the weights file itself: a run trained in bf16/fp16
    is scored again by the shipped fp32 weights (what covid-ddp-predict computes); an fp32 run
    that ships its last epoch already has that epoch's scores, and they are reused.
    """
    shipped_epoch = best.epoch if selection.criterion and best.epoch is not None else progress.epoch
    if shipped_epoch != progress.epoch:
        best.restore_into(accelerator.unwrap_model(run.model, keep_torch_compile=False))
        monitored = None  # the last epoch's scores: not those of the shipped weights
    why = selection.describe(progress.history, config.epochs, shipped_epoch)
    accelerator.print(f"Shipping {why}")
    # Net: the original's keys for raw pixels (normalisation folded into conv1); get_state_dict
    # is a collective under FSDP.
    weights = weights_state_dict(ckpt.consolidated_state_dict(accelerator.get_state_dict(run.model)),
                                 accelerator.unwrap_model(run.model, keep_torch_compile=False))
    if monitored is None or accelerator.mixed_precision != "no":  # (None: resumed after the last epoch)
        scorer = shipped_model(weights, run.spec, accelerator.device)
        monitored = evaluate(scorer, run.monitor_loader, accelerator)
    else:
        scorer = run.model
    # With --val-size 0 the monitored split is the test split.
    final = monitored if run.monitor_name == "Test" else evaluate(scorer, run.test_loader, accelerator)

    def score() -> tuple[dict, dict]:  # every rank holds the same gathered scores: the main process does it once
        decision = {**decide_threshold(monitored if run.monitor_name == "Validation" else None, config),
                    "epoch": shipped_epoch, "shipped": why, "model": run.spec.to_dict()}
        metrics = binary_metrics(final.p_covid, final.targets, final.loss, decision["threshold"],
                                 bootstrap=config.bootstrap, seed=config.seed, groups=patient_ids(meta, final.rows))
        by_source = per_source(final.p_covid, final.targets, source_names(meta, final.rows), decision["threshold"])
        return decision, {**metrics, **({"per_source": by_source} if by_source else {})}

    decision, test_metrics = on_main_process(accelerator, score, "score the test split")
    accelerator.print(f"Test set: Average loss: {final.loss:.4f}, Accuracy: {100 * test_metrics['accuracy']:.2f}% "
                      f"[COVID Detection] ({_describe_rates(test_metrics)}; threshold {decision['threshold']:.3f}, "
                      f"{decision['method']})")
    shown = accelerator.unwrap_model(scorer, keep_torch_compile=False)
    draw_final = board and (lambda: board.final(final, test_metrics, _hparams(config, accelerator), progress.epoch,
                                                shown, decision["threshold"]))
    shipped = {"epoch": shipped_epoch, "why": why, "select_by": config.select_by if selection.criterion else "last",
               "stopped_early": selection.stopped_early(progress.history, config.epochs)}
    path = folder.write_outputs(decision, weights, {"test": test_metrics, "shipped": shipped,
                                                    "history": progress.history}, draw_final)
    accelerator.print(f"Model saved to {path}")
    return test_metrics


def shipped_model(weights: dict, spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """The weights file's model as covid-ddp-predict runs it: fp32 (Net with BatchNorm folded)."""
    model = build_network(spec)
    model.load_state_dict(weights)
    return for_inference(model.to(device).eval())


def decide_threshold(validation: Evaluation | None, config: TrainConfig) -> dict:
    """The decision threshold (sidecar JSON beside the weights): chosen on the final model's
    validation scores; 0.5 when there is no validation split (--val-size 0), never the test's."""
    if validation is None:
        return {"threshold": 0.5, "method": "default 0.5 (--val-size 0: no validation split to choose on)"}
    chosen = choose_threshold(validation.p_covid, validation.targets, config.target_sensitivity)
    return {**chosen, "chosen_on": "validation", "validation_images": int(len(validation.targets))}


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


def _describe_rates(metrics: dict) -> str:
    def rate(value):
        return "n/a" if value is None else f"{value:.3f}"

    return (f"n={metrics['n']}, sensitivity {rate(metrics['sensitivity'])}, "
            f"specificity {rate(metrics['specificity'])}, ROC AUC {rate(metrics['roc_auc'])}")


def _hparams(config: TrainConfig, accelerator: Accelerator) -> dict:
    """TensorBoard's hparams accept only scalars and strings."""
    values = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    values.update(num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision)
    return values


def _apply_recipe_changes(run: PreparedRun, config: TrainConfig, changes: dict, accelerator: Accelerator) -> None:
    """--resume-with-changes: the optimizer's and the schedule's saved states hold the old learning
    rate, patience and factor; the new ones replace them."""
    optimizer, scheduler = run.optimizer, run.scheduler
    if "--lr" in changes:
        was = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] = config.lr
        accelerator.print(f"--lr {config.lr:g} applied to the optimizer (it was at {was:g} in the checkpoint)")
    if "--lr-patience" in changes:
        scheduler.patience = config.lr_patience
    if "--lr-factor" in changes:
        scheduler.factor = config.lr_factor


def _recorded_flags(config: TrainConfig, data: RawData) -> dict:
    """The flags as they ran; --mcfam-url only for a run on MCFAM files (a folder of one's own was
    never downloaded from it)."""
    flags = config.to_dict()
    if data.provenance.get("source") != "mcfam":
        flags.pop("mcfam_url")
    return flags


def _command_line() -> str:
    """This process's command, near enough as typed (a launcher's own flags are in "distributed")."""
    program = Path(sys.argv[0])
    if program.name.startswith("covid-ddp"):
        return shlex.join([program.name, *sys.argv[1:]])
    if program.parts[-2:] == ("covid_ddp", "train.py"):  # python -m covid_ddp.train (covid-ddp-report)
        return shlex.join(["python", "-m", "covid_ddp.train", *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def _by_source(data: RawData, split) -> dict:
    """Images and patients per source and class of each part (for config.json and the model card)."""
    targets = to_binary(data.labels)
    parts = {"all": np.concatenate(list(split.as_arrays().values())), **split.as_arrays()}
    tables = {part: table_of(data.meta, targets, rows) for part, rows in parts.items()}
    return {"by_source": tables} if tables["train"] is not None else {}


def _run_config(config: TrainConfig, accelerator: Accelerator, data: RawData, split, folder: RunFolder,
                run: PreparedRun) -> dict:
    return {
        "config": _recorded_flags(config, data),
        "output_dir": str(folder.path),
        "command": _command_line(),
        "model": {**run.spec.to_dict(), "parameters": sum(p.numel() for p in run.model.parameters())},
        "data": {"source": data.provenance.get("source", config.dataset), **data.provenance,
                 "fingerprint": fingerprint(data),
                 "split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                 **_by_source(data, split)},
        "distributed": {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                        "mixed_precision": accelerator.mixed_precision, "data_device": run.data_device,
                        "train_loader": run.train_loader_kind,
                        "distributed_type": str(accelerator.distributed_type),
                        "dynamo_backend": str(accelerator.state.dynamo_plugin.backend.value)},
        "environment": environment_summary(),
    }


if __name__ == "__main__":  # python -m covid_ddp.train, torchrun -m covid_ddp.train
    raise SystemExit(main())
