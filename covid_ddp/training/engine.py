"""One epoch of training and one evaluation pass, on every rank, over a ``PreparedRun`` (what the
loop works with: the prepared model, optimizer, schedule and loaders).

``train_one_epoch`` is the recipe's loop: forward, NLL loss, backward, optimizer step.
Three things around it have a helper each, so the loop still reads as the recipe:

- ``AccumulationCycles``: which micro-steps end an optimizer step (``--grad-accum-steps``).
- ``StepTally``: the losses, kept on the device. Nothing in a step waits for the device or
  for the other ranks; every ``--log-every`` steps and at the end of the epoch the ranks
  swap their tallies and any stop request in ONE small all-gather, which gives them the
  same loss to log, the same NaN verdict and the same stop step.
- ``numbered_batches``: this rank's batches of the epoch, from any step.

``evaluate`` scores each rank's shard; ``gather_for_metrics`` makes it exact.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from tqdm.auto import tqdm

from ..errors import UserError
from ..metrics import roc_auc
from ..models.spec import ModelSpec
from ..seeding import generator
from .augment import augment, wants_augmentation
from .checkpoint import TrainingProgress
from .interrupt import StopRequested, agreed_signal
from .loader import TrainingLoader
from .recipe import WeightAverage, steps_every_optimizer_step, training_loss


@dataclass
class Evaluation:
    """Everything an evaluation pass produced, identical on every rank."""

    loss: float
    p_covid: np.ndarray
    targets: np.ndarray
    rows: np.ndarray

    def accuracy(self, threshold: float) -> float:
        return float(((self.p_covid >= threshold) == self.targets).mean())

    @property
    def roc_auc(self) -> float | None:
        """Threshold-free: what the validation lines show before the run's threshold exists."""
        return roc_auc(self.p_covid, self.targets)


def train_one_epoch(model, optimizer, loader, accelerator, config, epoch: int,
                    progress: TrainingProgress | None = None, stopper=None,
                    after_optimizer_step: Callable[[], None] | None = None) -> tuple[float, float]:
    """One pass over this rank's shard; returns (global mean training loss, global images/s).

    With ``progress.step`` > 0 (resuming inside the epoch) the steps already done are skipped.
    On an agreed stop signal, ``progress`` records where the epoch stands and ``StopRequested``
    is raised on every rank at the same step. ``after_optimizer_step()`` follows every optimizer
    step (a per-step schedule, the weight average: ``PreparedRun.after_optimizer_step``).
    """
    progress = progress if progress is not None else TrainingProgress()
    model.train()
    cycles = AccumulationCycles(accelerator, model, config.grad_accum_steps, len(loader))
    tally = StepTally(accelerator, progress.sums_for(accelerator.process_index, accelerator.num_processes))
    totals = None
    for step, (images, targets, _) in numbered_batches(loader, accelerator, epoch, progress.step):
        with cycles.micro_step(step) as ends_cycle:
            if wants_augmentation(config):
                images = augment(images, config, generator(config.seed, "augment", images.device, epoch,
                                                           accelerator.process_index, step))
            loss = training_loss(model(images), targets, config.label_smoothing)
            accelerator.backward(loss * cycles.loss_scale(step))
            if ends_cycle:
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                if after_optimizer_step is not None:
                    after_optimizer_step()
        tally.add(loss, len(targets), step)
        if step % config.log_every == 0 or step == len(loader):  # the same steps on every rank
            totals = tally.agree(stopper.signum if stopper else 0)
            totals.stop_if_not_finite(epoch)
            _log_step(accelerator, optimizer, totals, epoch, step, len(loader))
            if totals.signum and ends_cycle:  # never inside an accumulation cycle
                progress.step, progress.partial_sums = step, totals.per_rank
                raise StopRequested(totals.signum, epoch, step)
    if totals is None:  # resumed from a stop at the epoch's last step: nothing left to train
        totals = tally.agree(0)
    # Where the epoch stands until it ends (progress.end_epoch): a stop during its validation saves
    # a checkpoint at its last step, which a resume takes up at the validation.
    progress.step, progress.partial_sums = len(loader), totals.per_rank
    # Images really trained, of the training part: the last partial batch waits for another epoch's order.
    trained, offered = totals.images, len(loader.rows)
    accelerator.print(f"Train Epoch: {epoch} [{trained}/{offered} ({100 * trained / offered:.0f}%)]\tLoss: "
                      f"{totals.mean_loss:.6f}\tLR: {optimizer.param_groups[0]['lr']:.6g}\t{totals.images_per_s:.0f} img/s")
    return totals.mean_loss, totals.images_per_s


class AccumulationCycles:
    """Which micro-steps of an epoch end an optimizer step, and how much each loss counts.

    Boundaries follow the step within the epoch (not accelerate's running counter, which
    only resets at the end of a prepared DataLoader): the last micro-batches of an epoch
    still make an optimizer step, and a resumed epoch has the same boundaries. Gradients
    are synced across ranks only on the last micro-step of a cycle (``no_sync`` before it).
    """

    def __init__(self, accelerator, model, accumulation: int, steps_per_epoch: int):
        self.accelerator, self.model = accelerator, model
        self.accumulation, self.steps = accumulation, steps_per_epoch

    @contextlib.contextmanager
    def micro_step(self, step: int):
        ends_cycle = step % self.accumulation == 0 or step == self.steps
        self.accelerator.sync_gradients = ends_cycle  # the optimizer and clipping follow this flag
        with contextlib.nullcontext() if ends_cycle else self.accelerator.no_sync(self.model):
            yield ends_cycle
        self.accelerator.sync_gradients = True

    def loss_scale(self, step: int) -> float:
        """accumulation / (micro-batches in this step's cycle): ``backward`` divides by the
        accumulation, and an epoch's last cycle may hold fewer micro-batches."""
        cycle_start = (step - 1) // self.accumulation * self.accumulation + 1
        return self.accumulation / min(self.accumulation, self.steps - cycle_start + 1)


@dataclass
class AgreedTotals:
    """What every rank learnt at the last agreement: identical on all of them."""

    per_rank: list  # [[loss sum, images], ...] by rank: what a mid-epoch checkpoint keeps
    first_bad_step: int  # first step with a NaN/inf loss on any rank, or -1
    signum: int  # a stop signal any rank received, or 0
    images_per_s: float

    @property
    def images(self) -> int:
        return int(sum(images for _, images in self.per_rank))

    @property
    def mean_loss(self) -> float:
        return sum(loss for loss, _ in self.per_rank) / max(self.images, 1)

    def stop_if_not_finite(self, epoch: int) -> None:
        """Every rank sees the same table, so all stop together, before anything is saved."""
        if self.first_bad_step >= 0:
            raise UserError(f"the training loss became NaN or infinite at epoch {epoch}, step {self.first_bad_step}; "
                            "stopped without saving this epoch (a run with an earlier checkpoint resumes from it with "
                            "--resume latest; one without leaves nothing behind). Try a lower "
                            "--lr, --max-grad-norm, or --mixed-precision no")


class StepTally:
    """This rank's loss sum and image count of the epoch, on the device.

    A step only keeps its (detached) loss: no device work, no host sync. At an agreement the
    kept losses are summed in one go, checked for NaN/inf, and swapped with the other ranks.
    """

    def __init__(self, accelerator, start: list[float]):
        self.accelerator, self.started = accelerator, time.perf_counter()
        self.sums = torch.tensor(start, device=accelerator.device)  # [sum of loss x batch size, images]
        self.restored_images = start[1]  # counted before a resume, not in this process's time
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (step, images, loss) since the last agreement

    def add(self, loss: torch.Tensor, count: int, step: int) -> None:
        self.pending.append((step, count, loss.detach()))

    def agree(self, signum: int) -> AgreedTotals:
        """Collective: one all-gather of [loss sum, images, first bad step, signal, images restored]."""
        first_bad_step = self.sums.new_full((1,), -1.0)
        if self.pending:
            steps, counts, losses = zip(*self.pending)
            losses = torch.stack(losses).float()
            counts = torch.tensor(counts, dtype=losses.dtype, device=losses.device)
            self.sums += torch.stack([(losses * counts).sum(), counts.sum()])
            bad = torch.tensor(steps, dtype=losses.dtype, device=losses.device)[~torch.isfinite(losses)]
            first_bad_step = torch.cat([bad, first_bad_step])[:1]  # the earliest, as steps only increase
            self.pending = []
        mine = torch.cat([self.sums, first_bad_step, self.sums.new_tensor([signum, self.restored_images])])
        table = self.accelerator.gather(mine.unsqueeze(0)).cpu().double()  # the one host sync
        bad = table[:, 2][table[:, 2] >= 0]
        trained_here = float(table[:, 1].sum() - table[:, 4].sum())
        return AgreedTotals(per_rank=table[:, :2].tolist(), first_bad_step=int(bad.min()) if len(bad) else -1,
                            signum=int(table[:, 3].max()),
                            images_per_s=trained_here / max(time.perf_counter() - self.started, 1e-9))


def numbered_batches(loader, accelerator, epoch: int, done_steps: int):
    """(step, batch) for this rank from step ``done_steps + 1`` of ``epoch`` on (steps count from 1).

    The loader owns its order (``loader.EpochBatches``): the epoch's permutation and the step to
    start from go straight to it, and drawing them leaves the global RNG (dropout) alone.
    """
    loader.set_epoch(epoch, start_step=done_steps)  # the same permutation on every rank, new each epoch
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, file=sys.stderr, total=len(loader), initial=done_steps,
               disable=None if accelerator.is_main_process else True)  # None: off when not a terminal
    yield from enumerate(bar, start=done_steps + 1)


def _log_step(accelerator, optimizer, totals: AgreedTotals, epoch: int, step: int, steps_per_epoch: int) -> None:
    accelerator.log({"train/loss": totals.mean_loss, "train/lr": optimizer.param_groups[0]["lr"],
                     "train/images_per_s": totals.images_per_s}, step=(epoch - 1) * steps_per_epoch + step)


def evaluate(model, loader, accelerator, stopper=None, where: tuple[int, int] = (0, 0)) -> Evaluation:
    """Every rank scores its shard; ``gather_for_metrics`` drops the padding of the last batch.

    The forward pass runs in inference mode, the gather outside it: gloo's all-gather fills
    its output tensors in place, which torch 2.4 refuses for tensors made in inference mode.
    With a ``stopper`` (validation inside the loop) the ranks agree on a stop signal before each
    batch, so a long pass never outlasts the launcher's kill grace: ``StopRequested`` at ``where``
    (epoch, step).
    """
    model.eval()
    log_probs, targets, rows = [], [], []
    for images, batch_targets, batch_rows in loader:
        if stopper is not None and (signum := agreed_signal(accelerator, stopper.signum)):
            raise StopRequested(signum, *where)
        with torch.inference_mode():
            scores = model(images).float()
        gathered = accelerator.gather_for_metrics((scores, batch_targets, batch_rows))
        for bucket, tensor in zip((log_probs, targets, rows), gathered):
            bucket.append(tensor.cpu())
    log_probs, targets, rows = torch.cat(log_probs), torch.cat(targets), torch.cat(rows)
    loss = F.nll_loss(log_probs, targets, reduction="mean").item()
    return Evaluation(loss, log_probs[:, 1].exp().numpy(), targets.numpy(), rows.numpy())


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
    average: WeightAverage | None = None  # --ema: what is validated, selected and shipped

    def after_optimizer_step(self) -> None:
        if steps_every_optimizer_step(self.scheduler):
            self.scheduler.step()
        if self.average is not None:
            self.average.update(extract_model_from_parallel(self.model, keep_torch_compile=False))

    def scored_model(self) -> torch.nn.Module:
        """What each epoch validates and the run selects and ships: the weight average (--ema), else
        the trained model (as prepared: DDP-wrapped, compiled)."""
        return self.average.module if self.average is not None else self.model

    def model_to_validate(self) -> torch.nn.Module:
        """``scored_model()``, the average with rank 0's BatchNorm statistics on every rank (as DDP's
        forward gives the model): a collective, called by every rank after its epoch's training."""
        if self.average is not None:
            self.average.share_buffers()
        return self.scored_model()

    def step_schedule_after_epoch(self, monitored_loss: float) -> None:
        """ReduceLROnPlateau, on the same gathered loss on every rank (a cosine steps every step)."""
        if not steps_every_optimizer_step(self.scheduler):
            self.scheduler.step(monitored_loss)

    def step_at_end_of(self, epoch: int) -> int:
        """The logging step at an epoch's end: every tracker's x-axis is the training step (the
        step logs'), as W&B requires of every log; each epoch's figures carry their epoch."""
        return epoch * len(self.train_loader)
