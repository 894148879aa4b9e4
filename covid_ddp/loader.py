"""Training batches cut straight from a device-resident uint8 set: no DataLoader, no workers.

A 64x64 grayscale set of 10,000 images is 41 MB, so each process holds all of it on its
device (``data.dataset_tensors``) and a batch is one ``index_select`` there. What the
DataLoader path (``EpochPermutation`` + accelerate's ``split_batches``) guarantees is kept,
batch for batch: every epoch all ranks draw the same permutation (``epoch_permutation``);
global batch ``b`` is ``permutation[b * B:(b + 1) * B]`` and rank ``r`` takes the ``r``-th
contiguous slice of it; the last partial global batch is dropped. So shards are disjoint,
complete up to that remainder, reshuffled each epoch, identical to the DataLoader path
(``--data-on-device no``), and a resumed epoch restarts at any step without replaying it.

With ``--balance-sources`` an epoch's order is a weighted draw with replacement instead
(``balanced_weights``): the same length, the same stream, the same sharding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .seeding import generator


@dataclasses.dataclass
class DeviceBatchLoader:
    """Iterates ``(images uint8 (b, 1, 64, 64), targets, rows)`` of this rank's share of each global batch."""

    images: torch.Tensor  # the whole uint8 set (N, 64, 64), on the training device
    targets: torch.Tensor  # (N,) int64, same device
    rows: np.ndarray  # the rows of the split this loader draws from
    batch_size: int  # global: summed over processes
    seed: int
    process_index: int = 0
    num_processes: int = 1
    epoch: int = 0
    start_step: int = 0  # batches of the epoch already done (resume inside an epoch)
    weights: np.ndarray | None = None  # --balance-sources: each row's chance to be drawn; None: a permutation

    def __post_init__(self):
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch size {self.batch_size} does not divide over {self.num_processes} processes")
        self._rows = torch.as_tensor(self.rows, dtype=torch.int64).to(self.images.device)

    def __len__(self) -> int:
        """Global batches per epoch; the same on every rank."""
        return len(self.rows) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, steps: int) -> "DeviceBatchLoader":
        """A copy that starts the epoch at batch ``steps`` (what accelerate's function does for a DataLoader)."""
        return dataclasses.replace(self, start_step=steps)

    def permutation(self) -> torch.Tensor:
        """The epoch's order of ``rows``, on the device: ``epoch_permutation``, moved once an epoch."""
        return epoch_permutation(len(self.rows), self.seed, self.epoch, self.weights).to(self._rows.device)

    def __iter__(self):
        order = self._rows[self.permutation()]
        share = self.batch_size // self.num_processes
        for step in range(self.start_step, len(self)):
            start = step * self.batch_size + self.process_index * share
            rows = order[start : start + share]
            yield self.images.index_select(0, rows).unsqueeze(1), self.targets.index_select(0, rows), rows


def epoch_permutation(count: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> torch.Tensor:
    """The order of an epoch's training rows: the ``data_order`` stream of (seed, epoch), drawn
    on the CPU, so it is the same on every rank and device type. 8 bytes an image.

    With ``weights``, ``count`` draws with replacement in proportion to them instead."""
    stream = generator(seed, "data_order", torch.device("cpu"), epoch)
    if weights is None:
        return torch.randperm(count, generator=stream)
    return torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), count, replacement=True, generator=stream)


def balanced_weights(sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each row's weight so that every (source, class) pair present weighs the same in a draw.

    A source that holds one class only still weighs as one pair: a hospital that sent only
    COVID films cannot be balanced against itself, only kept from drowning the others.
    """
    pairs = np.char.add(np.asarray(sources).astype(str), np.char.add("|", np.asarray(targets).astype(str)))
    _, pair_of_row, pair_sizes = np.unique(pairs, return_inverse=True, return_counts=True)
    weights = 1.0 / pair_sizes[pair_of_row]
    return weights / weights.sum()


class EpochPermutation(torch.utils.data.Sampler):
    """The DataLoader path's sampler (``--data-on-device no``): the same order as the device loader's."""

    def __init__(self, count: int, seed: int, weights: np.ndarray | None = None):
        self.count, self.seed, self.epoch, self.weights = count, seed, 0, weights

    def set_epoch(self, epoch: int) -> None:  # accelerate's prepared loader passes it on
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_permutation(self.count, self.seed, self.epoch, self.weights).tolist())

    def __len__(self) -> int:
        return self.count
