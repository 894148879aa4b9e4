"""The device-resident training loader: shards, epochs and resume points (one process here;
tests/test_distributed.py checks the same against a real 2-process DataLoader run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_ddp.loader import DeviceBatchLoader

IMAGES = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 64, 64).contiguous()
TARGETS = torch.arange(50) % 2
TRAIN_ROWS = np.arange(3, 50, 2)  # 24 rows of a split, not 0..n-1


def rows_of(loader) -> list[list[int]]:
    return [rows.tolist() for _, _, rows in loader]


def shards(num_processes: int, epoch: int, batch_size: int = 10) -> list[list[list[int]]]:
    loaders = [DeviceBatchLoader(IMAGES, TARGETS, TRAIN_ROWS, batch_size, seed=1, process_index=rank,
                                 num_processes=num_processes) for rank in range(num_processes)]
    for loader in loaders:
        loader.set_epoch(epoch)
    return [rows_of(loader) for loader in loaders]


def test_batches_hold_the_rows_images_and_targets():
    images, targets, rows = next(iter(DeviceBatchLoader(IMAGES, TARGETS, TRAIN_ROWS, 10, seed=1)))
    assert images.shape == (10, 1, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0, 0, 0], rows.to(torch.uint8)), "image i is row i of the set"
    assert torch.equal(targets, TARGETS[rows])
    assert set(rows.tolist()) <= set(TRAIN_ROWS.tolist())


def test_ranks_split_each_global_batch_of_one_process_run():
    (single,) = shards(1, epoch=1)
    rank0, rank1 = shards(2, epoch=1)
    assert len(single) == len(rank0) == len(rank1) == 2, "24 rows at batch 10: the partial batch is dropped"
    for whole, first, second in zip(single, rank0, rank1):
        assert first + second == whole
        assert not set(first) & set(second)


def test_every_epoch_is_reshuffled_and_reproducible():
    assert shards(1, epoch=1) == shards(1, epoch=1)
    assert shards(1, epoch=1) != shards(1, epoch=2)


def test_the_order_does_not_depend_on_the_global_rng():
    torch.manual_seed(0)
    before = shards(1, epoch=3)
    torch.manual_seed(123)
    torch.rand(10)
    assert shards(1, epoch=3) == before


def test_skipping_batches_resumes_inside_the_epoch():
    loader = DeviceBatchLoader(IMAGES, TARGETS, TRAIN_ROWS, 4, seed=1)
    loader.set_epoch(2)
    everything = rows_of(loader)
    resumed = loader.skip_first_batches(3)
    assert rows_of(resumed) == everything[3:]
    assert len(resumed) == len(loader) == 6, "len is the epoch's batches, as the loop counts steps"
    assert rows_of(loader) == everything, "the original loader is unchanged"


def test_a_batch_that_does_not_divide_over_the_processes_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        DeviceBatchLoader(IMAGES, TARGETS, TRAIN_ROWS, 9, seed=1, num_processes=2)


def test_a_short_last_accumulation_cycle_averages_over_its_own_micro_batches():
    from covid_ddp.engine import AccumulationCycles

    def scales(steps, accumulation):
        cycles = AccumulationCycles(None, None, accumulation, steps)
        return [cycles.loss_scale(step) for step in range(1, steps + 1)]

    # 7 steps, accumulating 3: cycles (1, 2, 3), (4, 5, 6), (7); backward() divides by 3.
    assert scales(7, 3) == [1, 1, 1, 1, 1, 1, 3]
    assert scales(6, 4) == [1, 1, 1, 1, 2, 2]
    assert scales(9, 1) == [1] * 9
