"""Training batches: which images each rank trains on, step by step, owned here whole.

``EpochBatches`` is the one owner of the data order. Every epoch all ranks draw the same
permutation (``epoch_permutation`` of (seed, epoch)); global batch ``b`` is
``permutation[b * B:(b + 1) * B]`` and rank ``r`` takes the ``r``-th contiguous slice of it;
the last partial global batch is dropped. So shards are disjoint, complete up to that
remainder, reshuffled each epoch, and an epoch can start at any step (a resume inside it)
without replaying the steps before. Nothing of it passes through accelerate's DataLoader
wrappers: their ``set_epoch`` does not reach a sampler once ``skip_first_batches`` has
wrapped it (a resumed epoch replayed epoch 0's order), nor at all in accelerate 1.3.

``TrainingLoader`` turns those positions into batches on the training device, from the
uint8 set held either on that device (a batch is one ``index_select`` there: no DataLoader,
no worker) or in host memory or a mapped store (a plain DataLoader gathers the rows, in
``--workers`` processes ahead of the step, and they are moved, pinned on a GPU). Both
placements give the same batches: the order is drawn here, in the training process.

With ``--balance-sources`` an epoch's order is a weighted draw with replacement instead
(``balanced_weights``): the same length, the same stream, the same sharding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.tensors import XrayDataset, collate_batch
from ..seeding import generator


@dataclasses.dataclass
class EpochBatches(torch.utils.data.Sampler):
    """This rank's positions (into the split's rows) in each global batch of ``epoch``, from ``start_step`` on.

    Also a DataLoader ``batch_sampler``: iterating it gives one list of positions a step.
    """

    count: int  # rows in the split
    batch_size: int  # global: summed over processes
    seed: int
    process_index: int = 0
    num_processes: int = 1
    weights: np.ndarray | None = None  # --balance-sources: each row's chance to be drawn; None: a permutation
    epoch: int = 0
    start_step: int = 0  # steps of the epoch already done (a resume inside it)

    def __post_init__(self):
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch size {self.batch_size} does not divide over {self.num_processes} processes")

    def __len__(self) -> int:
        """Global batches (steps) in an epoch: the same on every rank, whatever ``start_step``."""
        return self.count // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def shares(self) -> torch.Tensor:
        """(steps left, batch_size / num_processes) positions: row ``i`` is this rank's share of step
        ``start_step + 1 + i``."""
        steps, share = len(self), self.batch_size // self.num_processes
        order = epoch_permutation(self.count, self.seed, self.epoch, self.weights)[: steps * self.batch_size]
        return order.view(steps, self.num_processes, share)[self.start_step :, self.process_index]

    def __iter__(self):
        return iter(self.shares().tolist())


@dataclasses.dataclass
class TrainingLoader:
    """Iterates ``(images uint8 (b, 1, H, W), targets, rows)`` on ``device``: this rank's share of each
    global batch of the epoch set by ``set_epoch``."""

    images: torch.Tensor  # the whole uint8 set (N, H, W): on ``device``, or in host memory
    targets: torch.Tensor  # (N,) int64, beside the images
    rows: np.ndarray  # the rows of the split this loader draws from
    batch_size: int  # global
    seed: int
    device: torch.device  # where batches go: the training device
    on_device: bool = True  # the set is on ``device`` (else in host memory: the DataLoader path)
    process_index: int = 0
    num_processes: int = 1
    weights: np.ndarray | None = None
    workers: int = 0  # DataLoader worker processes (host memory only)

    def __post_init__(self):
        self.batches = EpochBatches(len(self.rows), self.batch_size, self.seed, self.process_index,
                                    self.num_processes, self.weights)
        self.dataset = XrayDataset(self.images, self.targets, self.rows)
        # Host memory: a DataLoader gathers each batch with one tensor index (XrayDataset.__getitems__).
        # Its own generator, so that creating an iterator leaves the global RNG (dropout) alone.
        # Workers stay up between epochs; the batch sampler runs in this process, so set_epoch
        # reaches it whatever they do.
        self._host_loader = None if self.on_device else torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.batches, collate_fn=collate_batch,
            pin_memory=torch.device(self.device).type == "cuda", generator=torch.Generator(),
            num_workers=self.workers, persistent_workers=self.workers > 0)

    def __len__(self) -> int:
        """Steps in an epoch (the loop counts steps from 1 to this, whatever the start step)."""
        return len(self.batches)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.batches.set_epoch(epoch, start_step)

    def __iter__(self):
        if self.on_device:
            for positions in self.batches.shares().to(self.device):
                yield self.dataset.batch(positions)
            return
        for images, targets, rows in self._host_loader:
            yield (images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True),
                   rows.to(self.device, non_blocking=True))


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
