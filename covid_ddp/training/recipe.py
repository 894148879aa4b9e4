"""The optimisation recipe: optimizer, learning-rate schedule, loss and weight average.

The seed's recipe is the default: Adam, ReduceLROnPlateau on the monitored loss once an epoch,
NLL loss, the trained weights themselves. The fine-tuner's options replace each part:

    --optimizer adamw --weight-decay 0.05     decoupled weight decay (AdamW)
    --schedule cosine --warmup-epochs 1       linear warm-up, then a cosine to 0, stepped every optimizer step
    --label-smoothing 0.1                     the training loss against smoothed targets (validation stays NLL)
    --ema 0.99                                an exponential moving average of the weights, evaluated, selected
                                              and shipped in their place

Every part's state is in the checkpoints (the optimizer's and the schedule's as before, the
average as ``ema.pt``), so a resume continues exactly, inside an epoch too.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..errors import UserError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "cosine")
# Parts of the recipe a resume cannot swap, even with --resume-with-changes: their saved state
# belongs to the old part (an Adam's moments, a plateau's patience count, an average's weights).
UNSWAPPABLE = ("--optimizer", "--schedule", "--warmup-epochs", "--ema")


def make_optimizer(model: torch.nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the recipe's) or AdamW, with --weight-decay; on CUDA their fused kernel (one launch
    for all parameters, same maths). Build it once the model is on ``device``."""
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused(device))


def fused(device: torch.device) -> bool:
    """Adam's and AdamW's fused kernels are CUDA's (on the CPU they refuse, or gain nothing)."""
    return device.type == "cuda"


def make_schedule(optimizer: torch.optim.Optimizer, config, optimizer_steps_per_epoch: int):
    """ReduceLROnPlateau (stepped once an epoch on the monitored loss), or a per-step cosine from
    --lr to 0 over the run's optimizer steps, after --warmup-epochs of linear warm-up."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=config.lr_patience,
                                                          factor=config.lr_factor)
    total = max(1, config.epochs * optimizer_steps_per_epoch)
    warmup = min(total - 1, config.warmup_epochs * optimizer_steps_per_epoch)

    def factor(step: int) -> float:  # (a plain function: LambdaLR saves no state of it, the JSON stays plain)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_every_optimizer_step(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


def training_loss(log_probs: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """NLL (the recipe's); with smoothing, the cross-entropy against (1 - e) one-hot + e / 2 (the
    model's log-probabilities are their own log-softmax, so cross_entropy over them is exact)."""
    if not label_smoothing:
        return F.nll_loss(log_probs, targets)
    return F.cross_entropy(log_probs, targets, label_smoothing=label_smoothing)


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (timm's ModelEmaV2 rule):
    after every optimizer step, average <- decay * average + (1 - decay) * weights; integer
    buffers (BatchNorm's step count) are copied.

    DDP keeps the weights equal on every rank, not BatchNorm's running statistics: each rank
    updates its own in its forward pass, and DDP hands rank 0's to the others at the next one.
    So the average's buffers are rank 0's before anything scores it (``share_buffers``), as the
    model's are: every rank then scores with what the main process checkpoints and ships."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for average, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current.detach(), 1 - self.decay)
            else:
                average.copy_(current)

    def share_buffers(self) -> None:
        """Rank 0's buffers on every rank (a collective: every rank calls it at the same point)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def refuse_swaps(changes: dict) -> None:
    """A resume's --resume-with-changes may not swap a part of the recipe whose state it holds."""
    swapped = [flag for flag in UNSWAPPABLE if flag in changes]
    if swapped:
        raise UserError(f"{', '.join(swapped)} cannot change at a resume (the checkpoint holds the state of the run's "
                        f"{' and '.join(f'{flag} {changes[flag][0]}' for flag in swapped)}); train a new run")
