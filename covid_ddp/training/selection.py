"""Which epoch's weights a run ships, and when it stops early (``--select-by``, ``--early-stop``).

Lightning's ModelCheckpoint and EarlyStopping, for one metric of the validation split::

    --select-by loss    the epoch with the lowest validation loss (default)
    --select-by auc     the epoch with the highest validation ROC AUC
    --select-by last    the last epoch, as the original script shipped it (and what --val-size 0 does:
                        with no validation split, choosing on the test split would be tuning on it)

Everything here is read from the run's history (one record per finished epoch), which every
checkpoint holds: the best epoch and an early stop are the same after a resume. Only the best
epoch's weights need keeping besides it (``BestWeights``, saved with each checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError

# --select-by -> (history key, whether a higher value is better, words for the run's messages)
CRITERIA = {"loss": ("validation_loss", False, "lowest validation loss"),
            "auc": ("validation_auc", True, "highest validation ROC AUC")}


@dataclass(frozen=True)
class Selection:
    """The rule a run applies: ``criterion`` is a key of CRITERIA, or None to ship the last epoch."""

    criterion: str | None
    patience: int | None = None  # --early-stop: epochs without improvement before stopping

    @classmethod
    def for_run(cls, select_by: str, early_stop: int | None, has_validation: bool) -> "Selection":
        if select_by == "last" or not has_validation:
            return cls(None)
        return cls(select_by, early_stop)

    def best_epoch(self, history: list[dict]) -> int | None:
        """The earliest epoch with the best value (None: ship the last epoch, or nothing trained yet).
        An epoch whose metric is undefined (NaN, or no AUC with one class) never counts as best."""
        if self.criterion is None or not history:
            return None
        key, higher_is_better, _ = CRITERIA[self.criterion]
        best = None
        for record in history:
            value = record.get(key)
            if value is None or not math.isfinite(value):
                continue
            if best is None or (value > best[1] if higher_is_better else value < best[1]):
                best = (record["epoch"], value)
        return best[0] if best else None

    def shipped_epoch(self, history: list[dict], kept: int | None, last: int) -> int:
        """The epoch whose weights ship: the best one when its weights were kept, else the last
        (what ``describe`` names: the two are decided by the same rule)."""
        best = self.best_epoch(history)
        return kept if best is not None and kept == best else last

    def check_kept(self, history: list[dict], kept: int | None, old_select_by: str) -> None:
        """A resume that changes --select-by: the best epoch by the new rule so far must be the one
        whose weights the checkpoint kept, or the run could not ship what it would name."""
        best = self.best_epoch(history)
        if best is None or best == kept:
            return
        held = f"it kept epoch {kept}'s, the best by --select-by {old_select_by}" if kept else \
            f"--select-by {old_select_by} keeps none"
        raise UserError(f"--select-by {self.criterion} at a resume: the best epoch so far by it is epoch {best}, whose "
                        f"weights the run did not keep ({held}); resume with --select-by {old_select_by}, or train "
                        "a new run")

    def stops_after(self, history: list[dict]) -> bool:
        """--early-stop: the last ``patience`` epochs did not improve on the best one."""
        if self.patience is None or not history:
            return False
        best = self.best_epoch(history)
        last = history[-1]["epoch"]
        return last - (best if best is not None else history[0]["epoch"] - 1) >= self.patience

    def stopped_early(self, history: list[dict], epochs: int) -> bool:
        """The run ended before --epochs because of --early-stop."""
        return bool(history) and history[-1]["epoch"] < epochs and self.stops_after(history)

    def describe(self, history: list[dict], epochs: int, shipped: int) -> str:
        """Which epoch is shipped and why, in one sentence for the run's output."""
        last = history[-1]["epoch"] if history else 0
        stopped = f" (stopped early after epoch {last}: no improvement in {self.patience} " \
            f"epoch{'s' if self.patience > 1 else ''})" if self.stopped_early(history, epochs) else ""
        if self.criterion is None:
            return f"the last epoch's weights (epoch {last}){stopped}"
        key, _, words = CRITERIA[self.criterion]
        best = self.best_epoch(history)
        if best is None:
            return f"the last epoch's weights (epoch {last}): no epoch had a defined {key.replace('_', ' ')}"
        if best != shipped:  # a run resumed from a checkpoint of covid_ddp 0.2, which kept no best weights
            return f"the last epoch's weights (epoch {last}): those of epoch {best}, the best, were not kept"
        value = next(record[key] for record in history if record["epoch"] == shipped)
        return f"the weights of epoch {shipped} of {last}, {words} ({value:.4f}){stopped}"


class BestWeights:
    """A CPU copy of the best epoch's model weights, kept on every rank (each scores the final
    model on its shard). ``epoch`` is None until an epoch has been kept."""

    def __init__(self):
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def keep(self, model: torch.nn.Module, epoch: int) -> None:
        self.epoch = epoch
        self.state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}

    def restore_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)
