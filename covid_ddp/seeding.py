"""Every random stream of a run, derived from (seed, stream, epoch, rank) in one place.

``--seed`` alone would not do: seeding epoch ``e`` with ``seed + e`` makes seed 2's epoch
``e`` repeat seed 1's epoch ``e + 1``, and rank ``r + 1`` repeat rank ``r`` one epoch on,
so "mean and spread over seeds 1, 2, 3" would understate the spread. ``stream_seed`` feeds
the whole tuple to numpy's ``SeedSequence``, whose hash makes any two tuples' seeds
unrelated::

    weights       (seed)                     initial weights, the same on every rank
    data_order    (seed, epoch)              the epoch's permutation, the same on every rank
    dropout       (seed, epoch, rank)        each rank's dropout masks for the epoch
    augment       (seed, epoch, rank, step)  each rank's augmentation draws for a step
    bootstrap     (seed)                     the test metrics' bootstrap resamples
    audit         (seed)                     covid-ddp-audit's stamped marks and probe folds

The synthetic data set is generated from ``--seed`` itself (it is data, not a stream of the
run). ``tests/test_seeding.py`` checks that no two of these tuples share a seed.
"""

from __future__ import annotations

import random

import numpy as np
import torch

STREAMS = ("weights", "data_order", "dropout", "augment", "bootstrap", "audit", "audit_sample")  # (append only)


def stream_seed(seed: int, stream: str, epoch: int = 0, rank: int = 0, step: int = 0) -> int:
    """A 64-bit seed for one random stream of a run."""
    if seed < 0:
        raise ValueError(f"seeds are 0 or more, got {seed}")
    entropy = [seed, STREAMS.index(stream), epoch, rank, step]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def seed_global_generators(seed: int, stream: str, epoch: int = 0, rank: int = 0) -> None:
    """Seed torch (every device), numpy's and Python's global generators with one stream."""
    value = stream_seed(seed, stream, epoch, rank)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def generator(seed: int, stream: str, device: torch.device, epoch: int = 0, rank: int = 0,
              step: int = 0) -> torch.Generator:
    """A torch generator on ``device`` for one stream, needing no checkpoint: (seed, epoch,
    rank, step) rebuild it exactly after a resume."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, epoch, rank, step))
