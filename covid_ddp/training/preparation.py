"""What the loop works with: the model (seeded, normalised, from --init-weights), the loaders over one
shared uint8 tensor, the optimizer and LR schedule, prepared by accelerate; the recipe changes of
--resume-with-changes; the sources announced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from ..cli import is_main_rank, say
from ..data.confounding import confounding_warning, format_table, single_source_warning
from ..data.format import RawData
from ..data.tensors import XrayDataset, collate_batch, dataset_tensors, pixel_statistics, wants_device
from ..errors import UserError
from ..files import load_plain
from ..models.backbones import load_initial_weights
from ..models.net import build_network
from ..models.spec import ModelSpec
from ..models.sync_batchnorm import convert_sync_batchnorm
from ..models.weights import refuse_non_finite
from ..seeding import seed_global_generators
from . import recipe
from .config import TrainConfig
from .distributed import on_every_process, on_main_process
from .engine import PreparedRun
from .loader import TrainingLoader, balanced_weights


def prepare_run(config: TrainConfig, data: RawData, targets: np.ndarray, split, accelerator: Accelerator,
                make_optimizer=recipe.make_optimizer, model: torch.nn.Module | None = None) -> PreparedRun:
    """Loaders, model (normalised with training-split statistics; ``new_model`` unless given),
    optimizer, LR schedule and, with --ema, the weight average.

    ``make_optimizer(model, config, device)`` builds the optimizer (--optimizer's; the
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
    spec = config.model_spec()
    # On its device before the optimizer sees it: fused Adam checks where the parameters are.
    optimizer = make_optimizer(model.to(accelerator.device), config, accelerator.device)
    # Not passed to prepare(): accelerate's wrapper would step it once per process.
    scheduler = recipe.make_schedule(optimizer, config, -(-len(train_loader) // config.grad_accum_steps))
    # Of the model before DDP wraps it: every rank averages the same weights.
    average = recipe.WeightAverage(model, config.ema) if config.ema else None
    # The training loader is not prepared: it shards and orders its batches itself. The evaluation
    # loaders are, for gather_for_metrics to drop the padding of their last batch.
    model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
    placement = (str(images.device), "device" if on_device else "DataLoader")
    if val_loader is None:  # --val-size 0: the original's behaviour, the test loss drives the schedule
        return PreparedRun(model, optimizer, scheduler, train_loader, test_loader, test_loader, "Test", *placement, spec,
                           average)
    return PreparedRun(model, optimizer, scheduler, train_loader, accelerator.prepare(val_loader), test_loader,
                       "Validation", *placement, spec, average)


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
    spec = config.model_spec()
    return build_model(config, spec, device, spec.fixed_normalization() or pixel_statistics(data.images, split.train))


def build_model(config: TrainConfig, spec: ModelSpec, device: torch.device,
                normalization: tuple[float, float]) -> torch.nn.Module:
    """The network of ``spec`` (from --init-weights, if given) with the training split's intensity
    statistics, laid out for speed."""
    model = build_network(spec, dropout=config.dropout)
    if config.init_weights:
        initial = Path(config.init_weights)
        loaded = load_initial_weights(model, refuse_non_finite(load_plain(initial, "--init-weights file"),
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


def announce_sources(table: dict | None) -> None:
    """The training images per source and class, and the confounding warning where a source holds
    one class, or the single-source one (nothing for data without sources)."""
    one_source = single_source_warning(table or {})
    if one_source:
        say(f"covid-ddp-train: warning: {one_source}")
    if not table or len(table) < 2:
        return
    say(format_table(table, title="covid-ddp-train: training images (patients) per source and class"))
    warning = confounding_warning(table)
    if warning:
        say(f"covid-ddp-train: warning: {warning}")


def apply_recipe_changes(run: PreparedRun, config: TrainConfig, changes: dict, accelerator: Accelerator) -> None:
    """--resume-with-changes: the optimizer's and the schedule's saved states hold the old learning
    rate, weight decay, patience and factor; the new ones replace them (a cosine restarts its
    curve from the new --lr, where it stands)."""
    optimizer, scheduler = run.optimizer, run.scheduler
    if "--lr" in changes:
        was = optimizer.param_groups[0]["lr"]
        if recipe.steps_every_optimizer_step(scheduler):
            scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
            for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):  # where the curve stands
                group["lr"] = config.lr * factor(scheduler.last_epoch)
        else:
            for group in optimizer.param_groups:
                group["lr"] = config.lr
        accelerator.print(f"--lr {config.lr:g} applied to the optimizer (it was at {was:g} in the checkpoint)")
    if "--weight-decay" in changes:
        for group in optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
    if "--lr-patience" in changes and not recipe.steps_every_optimizer_step(scheduler):
        scheduler.patience = config.lr_patience
    if "--lr-factor" in changes and not recipe.steps_every_optimizer_step(scheduler):
        scheduler.factor = config.lr_factor
