"""Independent random streams: no two (seed, stream, epoch, rank) share a seed."""

from __future__ import annotations

import itertools

import pytest
import torch

from covid_ddp.seeding import STREAMS, generator, stream_seed
from covid_ddp.training.loader import epoch_permutation


def test_no_two_seeds_epochs_ranks_or_streams_share_a_seed():
    """Seeding with seed + epoch (+ rank), as covid_ddp once did, makes seed 2's epoch e repeat
    seed 1's epoch e + 1, and rank r + 1 repeat rank r an epoch on: here every tuple is apart."""
    tuples = list(itertools.product(range(6), STREAMS, range(12), range(8), range(3)))
    seeds = {stream_seed(*t) for t in tuples}
    assert len(seeds) == len(tuples)


def test_shifted_seeds_and_epochs_give_other_data_orders_and_draws():
    assert not torch.equal(epoch_permutation(1000, seed=2, epoch=1), epoch_permutation(1000, seed=1, epoch=2))
    assert torch.equal(epoch_permutation(1000, seed=1, epoch=2), epoch_permutation(1000, seed=1, epoch=2))
    cpu = torch.device("cpu")
    draws = [torch.rand(100, generator=generator(1, "dropout", cpu, epoch=e, rank=r)) for e, r in ((1, 1), (2, 0))]
    assert not torch.equal(*draws), "rank 1 at epoch 1 must not repeat rank 0 at epoch 2"


def test_a_negative_seed_is_refused():
    with pytest.raises(ValueError, match="0 or more"):
        stream_seed(-1, "weights")
