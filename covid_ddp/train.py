"""Distributed training of the chest X-ray CNN, driven by accelerate.

Run it with any launcher; accelerate reads the process layout from the environment::

    python launch/train.py --dataset synthetic                 # one process (GPU if present, else CPU)
    accelerate launch launch/train.py                          # as accelerate_config.yaml says
    torchrun --nproc_per_node 2 launch/train.py --cpu ...      # two CPU processes (gloo)

Every rank trains on its shard of each global batch, evaluates its shard of the
validation/test parts (combined exactly with ``gather_for_metrics``) and steps
the LR schedule with the same, globally reduced validation loss. Only the main
process prints, logs to TensorBoard and writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    InitProcessGroupKwargs,
    broadcast_object_list,
    set_seed,
)
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .cli import run_cli
from .config import TrainConfig, default_output_dir, parse_config
from .board import Logger
from .data import (XrayDataset, collate_batch, dataset_tensors, load_dataset, pixel_statistics, to_binary,
                   wants_device)
from .errors import UserError
from .files import write_json
from .hardware import make_optimizer, resolve_mixed_precision, tune_backends, with_device_defaults
from .augment import augment_batch
from .interrupt import GracefulStop, StopRequested, TrainingInterrupted
from .loader import DeviceBatchLoader
from .metrics import binary_metrics, choose_threshold
from .model import Net
from .provenance import environment_summary, resident_memory_mb
from .splits import make_split
from .sync_batchnorm import convert_sync_batchnorm


@dataclass
class Evaluation:
    """Everything an evaluation pass produced, identical on every rank."""

    loss: float
    p_covid: np.ndarray
    targets: np.ndarray
    rows: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(((self.p_covid >= 0.5) == self.targets).mean())


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: train(parse_config(argv)), prog="covid-ddp-train")


def build_accelerator(config: TrainConfig) -> Accelerator:
    """``config`` with ``--mixed-precision auto`` already resolved (``hardware.resolve_mixed_precision``)."""
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        # Compiled after DDP wrapping, as accelerate does it; None leaves it to the accelerate config.
        dynamo_backend="inductor" if config.compile else None,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with="tensorboard",
        # A placeholder: the run folder is settled (and shared by all ranks) after start-up.
        project_dir=config.output_dir or "runs",
        # split_batches: --batch-size is global and each process takes its slice of every
        # batch; the seedable sampler gives every rank the same permutation for each epoch
        # (seed + epoch), so shards are disjoint, reshuffled per epoch and reproducible on resume.
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.dist_timeout))],
    )


def refuse_independent_launch(accelerator: Accelerator) -> None:
    """The launcher said N processes but accelerate formed no process group: N separate runs."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise UserError(
            f"WORLD_SIZE={launched} but accelerate sees 1 process: the launcher started {launched} independent "
            "runs that would each train on all the data and overwrite each other's files. Without GPUs, pass --cpu to "
            "the training script (`accelerate launch --multi_gpu --num_processes N launch/train.py --cpu`, or "
            "`torchrun --nproc_per_node N launch/train.py --cpu`); with GPUs, check that each process sees one"
        )


def resolve_output_dir(config: TrainConfig) -> Path:
    """The run folder, the same on every rank."""
    if config.output_dir:
        return Path(config.output_dir)
    if config.resume and config.resume != "latest":
        return Path(config.resume).resolve().parent.parent
    # Processes start seconds apart: the main process picks the timestamp for all.
    stamp = [datetime.datetime.now().strftime("%Y%m%d-%H%M%S")]
    broadcast_object_list(stamp)
    return default_output_dir(stamp[0])


def claim_output_dir(output_dir: Path, lock: ckpt.RunLock, config: TrainConfig) -> None:
    """Main process only: lock the folder; refuse a finished run unless --overwrite or --resume."""
    lock.acquire()
    if ckpt.is_finished_run(output_dir) and not config.resume:
        if not config.overwrite:
            raise UserError(f"{output_dir} holds a finished run; choose another --output-dir or pass --overwrite")
        ckpt.clear_run(output_dir)


def on_main_process(accelerator: Accelerator, check) -> None:
    """Run ``check`` on the main process; if it raises a ``UserError``, every rank raises it.

    Without this, the other ranks would wait in their next collective until the launcher
    killed them, and the user would see a wall of tracebacks instead of one line.
    """
    error = [None]
    if accelerator.is_main_process:
        try:
            check()
        except UserError as failure:
            error = [str(failure)]
    broadcast_object_list(error)
    if error[0] is not None:
        raise UserError(error[0])


def make_loaders(images, targets, split, config: TrainConfig, *, num_processes: int, process_index: int,
                 on_device: bool):
    """Training loader (shuffled) and evaluation loaders over one shared uint8 tensor.

    With the set ``on_device``, training batches are cut there by a ``DeviceBatchLoader``;
    otherwise a DataLoader (for accelerate to prepare) fetches them. Both give every rank the
    same shards. Evaluation always uses a DataLoader: ``gather_for_metrics`` needs accelerate's
    view of its last batch to drop the padding, which keeps evaluation exact.
    """
    if config.batch_size % num_processes or config.eval_batch_size % num_processes:
        raise UserError(
            f"--batch-size {config.batch_size} and --eval-batch-size {config.eval_batch_size} are global and must "
            f"divide evenly over {num_processes} processes"
        )
    for name, rows in (("training", split.train), ("validation", split.val), ("test", split.test)):
        if 0 < len(rows) < num_processes or (name != "validation" and len(rows) < num_processes):
            raise UserError(f"the {name} part has {len(rows)} images, fewer than the {num_processes} processes; "
                            "use more data or fewer processes")

    if len(split.train) < config.batch_size:
        raise UserError(f"the training part has {len(split.train)} images, fewer than --batch-size {config.batch_size}")

    def loader(rows, batch_size, shuffle):
        # Training drops the last partial global batch (the permutation changes every epoch, so
        # every image is still used): padding it, as DistributedSampler does, would make N
        # processes train on other images than 1 process. Evaluation keeps every image.
        dataset = XrayDataset(images, targets, rows)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                                           collate_fn=collate_batch)

    if on_device:
        train_loader = DeviceBatchLoader(images, targets, split.train, config.batch_size, config.seed,
                                         process_index, num_processes)
    else:
        train_loader = loader(split.train, config.batch_size, shuffle=True)
    val_loader = loader(split.val, config.eval_batch_size, shuffle=False) if len(split.val) else None
    test_loader = loader(split.test, config.eval_batch_size, shuffle=False)
    return train_loader, val_loader, test_loader


@dataclass
class Prepared:
    """What the loop works with, after ``accelerator.prepare``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_loader: DeviceBatchLoader | torch.utils.data.DataLoader
    monitor_loader: torch.utils.data.DataLoader  # validation, or test when --val-size 0
    test_loader: torch.utils.data.DataLoader
    monitor_name: str
    data_device: str  # where the uint8 set lives (--data-on-device)
    train_loader_kind: str  # 'device' (DeviceBatchLoader) or 'DataLoader'


def train(config: TrainConfig) -> dict:
    """Train, checkpoint every epoch, test once, write the run folder; returns the final test metrics."""
    config = resolve_mixed_precision(config)
    accelerator = build_accelerator(config)
    refuse_independent_launch(accelerator)
    config = with_device_defaults(config, accelerator.device, accelerator.num_processes)
    tune_backends(accelerator.device)
    output_dir = resolve_output_dir(config)
    lock = ckpt.RunLock(output_dir)
    try:
        on_main_process(accelerator, lambda: claim_output_dir(output_dir, lock, config))
        return _train_in(output_dir, config, accelerator)
    except UserError:
        shut_down(accelerator, barrier=False)  # the other ranks may not reach a barrier
        raise
    finally:
        lock.release()


def _train_in(output_dir: Path, config: TrainConfig, accelerator: Accelerator) -> dict:
    resume_from = ckpt.resolve_resume(config.resume, output_dir) if config.resume else None

    with accelerator.main_process_first():  # the main process downloads; the others then read the cache
        data = load_dataset(config.dataset, config.data_dir, config.synthetic_size, config.seed, config.mcfam_url,
                            config.pins())
    targets = to_binary(data.labels)
    split = make_split(targets, config.split_plan(), data.meta)
    on_main_process(accelerator, lambda: ckpt.keep_split(output_dir, split, resuming=resume_from is not None))
    run = prepare_run(config, data, targets, split, accelerator)
    progress = ckpt.TrainingProgress()
    accelerator.register_for_checkpointing(run.scheduler, progress)
    if resume_from is not None:
        resume(accelerator, resume_from, progress, config.epochs)

    accelerator.project_configuration.set_directories(str(output_dir))
    # Hyper-parameters go to TensorBoard once, at the end, next to the final metrics (board.final).
    accelerator.init_trackers(ckpt.TENSORBOARD_DIR)
    board = Logger.for_run(accelerator, data.images, targets, split.val if len(split.val) else split.test,
                           config.log_images_every)
    monitored = None
    with GracefulStop() as stopper:
        try:
            for epoch in range(progress.epoch + 1, config.epochs + 1):
                record, monitored = run_epoch(run, accelerator, config, epoch, len(split.train), progress, stopper,
                                              board)
                progress.epoch = epoch
                progress.history.append(record)
                ckpt.save_checkpoint(accelerator, output_dir, epoch, config.keep_checkpoints)
        except StopRequested as stop:
            saved = ckpt.save_checkpoint(accelerator, output_dir, stop.epoch, config.keep_checkpoints, step=stop.step)
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(stop.signum).name} at epoch {stop.epoch}, step {stop.step}; saved "
                f"{saved}. To continue, run the same command with --resume latest --output-dir {output_dir}",
                stop.signum) from None

    run_config = _run_config(config, accelerator, data.provenance, split, output_dir, run)
    test_metrics, weights_path = _test_and_save(run, accelerator, config, output_dir, monitored, board, progress,
                                                run_config)
    del run  # the DDP wrapper holds the process group: release it before shutting down
    shut_down(accelerator)
    accelerator.print(f"Model saved to {weights_path}")
    return test_metrics


def _test_and_save(run: Prepared, accelerator: Accelerator, config: TrainConfig, output_dir: Path,
                   monitored: Evaluation | None, board: Logger | None, progress: ckpt.TrainingProgress,
                   run_config: dict) -> tuple[dict, Path]:
    """Pick the threshold on validation, score the test split once with it, write the run's outputs."""
    if monitored is None:  # no epoch ran here (resume refuses that today): score the model as it is
        monitored = evaluate(run.model, run.monitor_loader, accelerator)
    decision = decide_threshold(monitored if run.monitor_name == "Validation" else None, config)
    final = evaluate(run.model, run.test_loader, accelerator)
    test_metrics = binary_metrics(final.p_covid, final.targets, final.loss, decision["threshold"],
                                  bootstrap=config.bootstrap if accelerator.is_main_process else 0, seed=config.seed)
    accelerator.print(f"Test set: Average loss: {final.loss:.4f}, Accuracy: {100 * test_metrics['accuracy']:.2f}% "
                      f"[COVID Detection] ({_describe_rates(test_metrics)}; threshold {decision['threshold']:.3f}, "
                      f"{decision['method']})")
    # Before the weights, whose presence marks a finished run; a write error stops every rank.
    on_main_process(accelerator, lambda: ckpt.write_decision(output_dir / ckpt.WEIGHTS_FILE, decision))
    weights_path = ckpt.export_weights(accelerator, run.model, output_dir)
    if accelerator.is_main_process:
        write_json(output_dir / ckpt.CONFIG_FILE, run_config)
        write_json(output_dir / ckpt.METRICS_FILE, {"test": test_metrics, "history": progress.history})
        board.final(final, test_metrics, _hparams(config, accelerator), progress.epoch)
    return test_metrics, weights_path


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
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    gc.collect()


def build_model(config: TrainConfig, device: torch.device, normalization: tuple[float, float]) -> torch.nn.Module:
    """``Net`` with the training split's intensity statistics, laid out for speed."""
    model = Net(dropout=config.dropout)
    model.set_normalization(*normalization)
    if config.sync_bn:
        model = convert_sync_batchnorm(model, device)
    # NHWC convolutions: faster training and evaluation on this project's 2-core CPU
    # (benchmarks/throughput.py), and the layout GPU tensor cores want.
    return model.to(memory_format=torch.channels_last)


def prepare_run(config: TrainConfig, data, targets: np.ndarray, split, accelerator: Accelerator) -> Prepared:
    """Loaders, model (normalised with training-split statistics), optimizer and LR schedule."""
    # Decided once, on the main process: ranks with different free GPU memory still agree.
    on_device = [wants_device(data.images, targets, accelerator.device, config.data_on_device)]
    broadcast_object_list(on_device)
    images, targets_t = dataset_tensors(data.images, targets, accelerator.device, on_device[0])
    train_loader, val_loader, test_loader = make_loaders(images, targets_t, split, config,
                                                         num_processes=accelerator.num_processes,
                                                         process_index=accelerator.process_index,
                                                         on_device=on_device[0])
    set_seed(config.seed)  # identical initial weights on every rank
    model = build_model(config, accelerator.device, pixel_statistics(data.images, split.train))
    optimizer = make_optimizer(model, config.lr, accelerator.device)
    # Not passed to prepare(): accelerate's wrapper would step it once per process.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=config.lr_patience, factor=config.lr_factor)
    # prepare() passes a DeviceBatchLoader through untouched and wraps a DataLoader for sharding.
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    placement = (str(images.device), "device" if on_device[0] else "DataLoader")
    if val_loader is None:  # --val-size 0: the original's behaviour, the test loss drives the schedule
        return Prepared(model, optimizer, scheduler, train_loader, test_loader, test_loader, "Test", *placement)
    return Prepared(model, optimizer, scheduler, train_loader, accelerator.prepare(val_loader), test_loader,
                    "Validation", *placement)


def resume(accelerator: Accelerator, checkpoint: Path, progress: ckpt.TrainingProgress, epochs: int) -> None:
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"Resumed from {checkpoint} (epoch {progress.epoch} done)")
    if progress.epoch >= epochs:
        raise UserError(f"{checkpoint} is already at epoch {progress.epoch} of --epochs {epochs}; "
                        "pass a larger --epochs to train longer")


def run_epoch(run: Prepared, accelerator: Accelerator, config: TrainConfig, epoch: int, train_size: int,
              progress: ckpt.TrainingProgress, stopper: GracefulStop,
              board: Logger | None = None) -> tuple[dict, Evaluation]:
    """Train one epoch, evaluate, step the LR schedule; returns the epoch's history record and evaluation."""
    if progress.step == 0:
        # Dropout masks differ per rank and epoch and depend only on (seed, epoch, rank), so a
        # resumed epoch is exact. (Resuming inside an epoch, load_state restored the RNG instead.)
        set_seed(config.seed + epoch, device_specific=True)
    train_loss, images_per_s = train_one_epoch(run.model, run.optimizer, run.train_loader, accelerator, config,
                                               epoch, train_size, progress, stopper)
    monitored = evaluate(run.model, run.monitor_loader, accelerator)
    run.scheduler.step(monitored.loss)  # the same gathered loss on every rank -> the same LR everywhere
    name = run.monitor_name.lower()
    record = {"epoch": epoch, "train_loss": train_loss, f"{name}_loss": monitored.loss,
              f"{name}_accuracy": monitored.accuracy, "lr": run.optimizer.param_groups[0]["lr"],
              "images_per_s": images_per_s, "rss_mb": resident_memory_mb()}
    accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, step=epoch)
    if board is not None:  # main process only; no collectives inside
        board.epoch(accelerator.unwrap_model(run.model, keep_torch_compile=False), monitored, run.monitor_name, epoch)
    accelerator.print(f"{run.monitor_name} set: Average loss: {monitored.loss:.4f}, "
                      f"Accuracy: {100 * monitored.accuracy:.2f}% [COVID Detection]")
    return record, monitored


def _describe_rates(metrics: dict) -> str:
    def rate(value):
        return "n/a" if value is None else f"{value:.3f}"

    return (f"n={metrics['n']}, sensitivity {rate(metrics['sensitivity'])}, "
            f"specificity {rate(metrics['specificity'])}, ROC AUC {rate(metrics['roc_auc'])}")


def train_one_epoch(model, optimizer, loader, accelerator, config, epoch: int, train_size: int,
                    progress: ckpt.TrainingProgress | None = None,
                    stopper: GracefulStop | None = None) -> tuple[float, float]:
    """One pass over this rank's shard; returns (global mean training loss, global images/s).

    With ``progress.step`` > 0 (resuming inside the epoch) the steps already done are skipped.
    On an agreed stop signal, ``progress`` records where the epoch stands and ``StopRequested``
    is raised on every rank at the same step.
    """
    progress = progress if progress is not None else ckpt.TrainingProgress()
    model.train()
    steps_per_epoch = len(loader)
    if progress.step:
        loader = (loader.skip_first_batches(progress.step) if isinstance(loader, DeviceBatchLoader)
                  else accelerator.skip_first_batches(loader, progress.step))
    loader.set_epoch(epoch)  # the same permutation on every rank, new each epoch
    loss_sum, seen = (torch.tensor(value, device=accelerator.device)
                      for value in progress.sums_for(accelerator.process_index, accelerator.num_processes))
    first_bad_step = torch.full((), -1, device=accelerator.device)  # updated without a host sync
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, file=sys.stderr,
               disable=None if accelerator.is_main_process else True)  # None: off when not a terminal
    # Creating a DataLoader's iterator draws a seed from the global RNG (a DeviceBatchLoader
    # draws none). The state is put back once the iterator exists, so dropout and augmentation
    # see the same random stream with either loader, and after a resume inside the epoch.
    rng_before_iterator = torch.get_rng_state()
    for step, (images, targets, _) in enumerate(bar, start=progress.step + 1):
        if rng_before_iterator is not None:
            torch.set_rng_state(rng_before_iterator)
            rng_before_iterator = None
        if config.augment:
            images = augment_batch(images)
        # Accumulation boundaries follow the step within the epoch (not accelerate's running
        # counter): the last micro-batches of an epoch still make an optimizer step, and a
        # resumed epoch has the same boundaries. The optimizer only steps when they sync.
        accelerator.sync_gradients = step % config.grad_accum_steps == 0 or step == steps_per_epoch
        with contextlib.nullcontext() if accelerator.sync_gradients else accelerator.no_sync(model):
            loss = F.nll_loss(model(images), targets)
            # backward() divides by grad_accum_steps; an epoch's last cycle may hold fewer.
            accelerator.backward(loss * _short_cycle_scale(step, steps_per_epoch, config.grad_accum_steps))
            if config.max_grad_norm is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        loss_sum += loss.detach().float() * len(targets)
        seen += len(targets)
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss.detach()), step, first_bad_step)
        if step % config.log_every == 0:  # same step on every rank: the reduce is a collective
            totals = accelerator.reduce(torch.stack([loss_sum, seen]), reduction="sum")
            _stop_if_not_finite(accelerator, totals, first_bad_step, epoch)
            _log_step(accelerator, optimizer, totals, started, epoch, step, steps_per_epoch)
        # Only between optimizer steps: a stop inside an accumulation cycle would lose its gradients.
        if stopper is not None and accelerator.sync_gradients and (signum := stopper.agreed_signal(accelerator)):
            progress.step = step
            progress.partial_sums = accelerator.gather(torch.stack([loss_sum, seen]).unsqueeze(0)).tolist()
            raise StopRequested(signum, epoch, step)
    accelerator.sync_gradients = True
    totals = accelerator.reduce(torch.stack([loss_sum, seen]), reduction="sum")
    _stop_if_not_finite(accelerator, totals, first_bad_step, epoch)
    progress.step, progress.partial_sums = 0, []
    elapsed = time.perf_counter() - started
    mean_loss = (totals[0] / totals[1]).item()
    accelerator.print(f"Train Epoch: {epoch} [{train_size}/{train_size} (100%)]\tLoss: {mean_loss:.6f}\t"
                      f"LR: {optimizer.param_groups[0]['lr']:.6g}\t{totals[1].item() / elapsed:.0f} img/s")
    return mean_loss, totals[1].item() / elapsed


def _short_cycle_scale(step: int, steps_per_epoch: int, accumulation: int) -> float:
    """accumulation / (micro-batches in this step's cycle): 1 except in a short last cycle."""
    cycle_start = (step - 1) // accumulation * accumulation + 1
    return accumulation / min(accumulation, steps_per_epoch - cycle_start + 1)


def _stop_if_not_finite(accelerator, totals, first_bad_step, epoch: int) -> None:
    """Every rank sees the same reduced sum, so all stop together, before anything is saved."""
    if torch.isfinite(totals[0]):
        return
    steps = accelerator.gather(first_bad_step.reshape(1))
    step = int(steps[steps >= 0].min())
    raise UserError(f"the training loss became NaN or infinite at epoch {epoch}, step {step}; stopped without "
                    "saving this epoch (the last complete checkpoint is kept). Try a lower --lr, --max-grad-norm, "
                    "or --mixed-precision no")


def _log_step(accelerator, optimizer, totals, started, epoch, step, steps_per_epoch) -> None:
    global_step = (epoch - 1) * steps_per_epoch + step
    accelerator.log({"train/loss": (totals[0] / totals[1]).item(), "train/lr": optimizer.param_groups[0]["lr"],
                     "train/images_per_s": totals[1].item() / (time.perf_counter() - started)}, step=global_step)


@torch.inference_mode()
def evaluate(model, loader, accelerator) -> Evaluation:
    """Every rank scores its shard; ``gather_for_metrics`` drops the padding of the last batch."""
    model.eval()
    log_probs, targets, rows = [], [], []
    for images, batch_targets, batch_rows in loader:
        gathered = accelerator.gather_for_metrics((model(images).float(), batch_targets, batch_rows))
        for bucket, tensor in zip((log_probs, targets, rows), gathered):
            bucket.append(tensor.cpu())
    log_probs, targets, rows = torch.cat(log_probs), torch.cat(targets), torch.cat(rows)
    loss = F.nll_loss(log_probs, targets, reduction="mean").item()
    return Evaluation(loss, log_probs[:, 1].exp().numpy(), targets.numpy(), rows.numpy())


def _hparams(config: TrainConfig, accelerator: Accelerator) -> dict:
    """TensorBoard's hparams accept only scalars and strings."""
    values = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    values.update(num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision)
    return values


def _run_config(config: TrainConfig, accelerator: Accelerator, provenance: dict, split, output_dir: Path,
                run: Prepared) -> dict:
    return {
        "config": config.to_dict(),
        "output_dir": str(output_dir),
        "data": {"dataset": config.dataset, **provenance,
                 "split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}},
        "distributed": {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                        "mixed_precision": accelerator.mixed_precision, "data_device": run.data_device,
                        "train_loader": run.train_loader_kind,
                        "distributed_type": str(accelerator.distributed_type)},
        "environment": environment_summary(),
    }
