"""The training loader: shards, epochs and resume points on both placements of the set (one
process here; tests/test_distributed.py checks the same in a real 2-process run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_ddp.training.loader import TrainingLoader

IMAGES = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 64, 64).contiguous()
TARGETS = torch.arange(50) % 2
TRAIN_ROWS = np.arange(3, 50, 2)  # 24 rows of a split, not 0..n-1


PLACEMENTS = {"device": True, "DataLoader": False}  # the set on the training device, or in host memory


def training_loader(images, targets, rows, batch_size, seed, process_index=0, num_processes=1, weights=None,
                    on_device=True) -> TrainingLoader:
    return TrainingLoader(images, targets, rows, batch_size, seed, device=torch.device("cpu"), on_device=on_device,
                          process_index=process_index, num_processes=num_processes, weights=weights)


def rows_of(loader) -> list[list[int]]:
    return [rows.tolist() for _, _, rows in loader]


def shards(num_processes: int, epoch: int, batch_size: int = 10, on_device: bool = True) -> list[list[list[int]]]:
    loaders = [training_loader(IMAGES, TARGETS, TRAIN_ROWS, batch_size, seed=1, process_index=rank,
                                 num_processes=num_processes, on_device=on_device) for rank in range(num_processes)]
    for loader in loaders:
        loader.set_epoch(epoch)
    return [rows_of(loader) for loader in loaders]


def test_batches_hold_the_rows_images_and_targets():
    images, targets, rows = next(iter(training_loader(IMAGES, TARGETS, TRAIN_ROWS, 10, seed=1)))
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


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_every_epoch_is_reshuffled_and_reproducible(placement):
    on_device = PLACEMENTS[placement]
    assert shards(2, epoch=1, on_device=on_device) == shards(2, epoch=1, on_device=on_device)
    assert shards(2, epoch=1, on_device=on_device) != shards(2, epoch=2, on_device=on_device)
    assert shards(2, epoch=2, on_device=on_device) != shards(2, epoch=3, on_device=on_device)


def test_both_placements_give_the_same_batches():
    for epoch in (1, 2):
        assert shards(2, epoch, on_device=True) == shards(2, epoch, on_device=False)


def test_the_order_does_not_depend_on_the_global_rng():
    torch.manual_seed(0)
    before = shards(1, epoch=3)
    torch.manual_seed(123)
    torch.rand(10)
    assert shards(1, epoch=3) == before


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_starting_at_a_step_resumes_inside_the_epoch(placement):
    loader = training_loader(IMAGES, TARGETS, TRAIN_ROWS, 4, seed=1, on_device=PLACEMENTS[placement])
    loader.set_epoch(2)
    everything = rows_of(loader)
    loader.set_epoch(2, start_step=3)
    assert rows_of(loader) == everything[3:]
    assert len(loader) == 6, "len is the epoch's steps, as the loop counts them, whatever the start step"
    loader.set_epoch(2, start_step=6)
    assert rows_of(loader) == [], "stopped at the epoch's last step: nothing left of it"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_resumed_rank_continues_its_epochs_own_order(placement):
    """The case accelerate's wrappers got wrong: rank 0 of 2, 40 rows, batch 8, a fresh loader
    (a resumed process) started at step 2 of epoch 2 trains epoch 2's batches, not epoch 0's."""
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1).expand(40, 64, 64).contiguous()

    def rank0():
        return training_loader(images, torch.arange(40) % 2, np.arange(40), 8, seed=1, process_index=0,
                                 num_processes=2, on_device=PLACEMENTS[placement])

    uninterrupted = rank0()
    uninterrupted.set_epoch(2)
    epoch_2 = rows_of(uninterrupted)
    resumed = rank0()
    resumed.set_epoch(2, start_step=2)
    assert rows_of(resumed) == epoch_2[2:]
    never_set = rank0()
    assert rows_of(resumed) != rows_of(never_set)[2:], "epoch 0's order is another one"


def test_a_batch_that_does_not_divide_over_the_processes_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        training_loader(IMAGES, TARGETS, TRAIN_ROWS, 9, seed=1, num_processes=2)


def test_a_short_last_accumulation_cycle_averages_over_its_own_micro_batches():
    from covid_ddp.training.engine import AccumulationCycles

    def scales(steps, accumulation):
        cycles = AccumulationCycles(None, None, accumulation, steps)
        return [cycles.loss_scale(step) for step in range(1, steps + 1)]

    # 7 steps, accumulating 3: cycles (1, 2, 3), (4, 5, 6), (7); backward() divides by 3.
    assert scales(7, 3) == [1, 1, 1, 1, 1, 1, 3]
    assert scales(6, 4) == [1, 1, 1, 1, 2, 2]
    assert scales(9, 1) == [1] * 9


def test_balanced_sources_weigh_every_source_class_pair_the_same():
    from covid_ddp.training.loader import balanced_weights, epoch_permutation

    # A big one-class source, a small mixed one and a tiny one-class one: 900 / 60+40 / 20 rows.
    sources = np.array(["big"] * 900 + ["mixed"] * 100 + ["tiny"] * 20)
    targets = np.array([0] * 900 + [0] * 60 + [1] * 40 + [1] * 20)
    weights = balanced_weights(sources, targets)
    pairs = [(sources == s) & (targets == t) for s, t in (("big", 0), ("mixed", 0), ("mixed", 1), ("tiny", 1))]
    np.testing.assert_allclose([weights[pair].sum() for pair in pairs], 0.25)
    drawn = epoch_permutation(len(sources), seed=1, epoch=1, weights=weights).numpy()
    assert len(drawn) == len(sources), "an epoch keeps its length"
    shares = [np.isin(drawn, np.flatnonzero(pair)).mean() for pair in pairs]
    np.testing.assert_allclose(shares, 0.25, atol=0.05)
    assert np.array_equal(drawn, epoch_permutation(len(sources), seed=1, epoch=1, weights=weights).numpy())
    assert not np.array_equal(drawn, epoch_permutation(len(sources), seed=1, epoch=2, weights=weights).numpy())


def test_balanced_loader_shards_the_same_draw_over_ranks():
    from covid_ddp.training.loader import balanced_weights

    # TRAIN_ROWS are odd, so all of class 1: two pairs, source a (rows 3-9) and source b.
    weights = balanced_weights(np.where(TRAIN_ROWS < 10, "a", "b"), TARGETS.numpy()[TRAIN_ROWS])
    loaders = [training_loader(IMAGES, TARGETS, TRAIN_ROWS, 10, seed=1, process_index=rank, num_processes=n,
                                 weights=weights) for n in (1, 2) for rank in range(n)]
    single, rank0, rank1 = (rows_of(loader) for loader in loaders)
    assert [first + second for first, second in zip(rank0, rank1)] == single
    drawn = [row for batch in single for row in batch]
    assert sum(row < 10 for row in drawn) > 5, "4 of 24 rows, but 1 of 2 pairs: drawn far more often than 1 in 6"


def test_training_weights_follow_the_training_rows_of_the_split():
    from types import SimpleNamespace

    from covid_ddp.training.config import TrainConfig
    from covid_ddp.training.preparation import training_weights

    targets = np.array([0, 1] * 6)
    meta = {"dataset": np.array(["a"] * 8 + ["b"] * 4)}
    split = SimpleNamespace(train=np.array([11, 0, 1, 2, 9]))  # b/1, a/0, a/1, a/0, b/1
    data = SimpleNamespace(meta=meta)
    assert training_weights(TrainConfig(), data, targets, split) is None, "off by default: a permutation"
    weights = training_weights(TrainConfig(balance_sources=True), data, targets, split)
    np.testing.assert_allclose(weights, [1 / 6, 1 / 6, 1 / 3, 1 / 6, 1 / 6])
    # No meta.npz: one source, so the pairs are the two classes.
    one_source = training_weights(TrainConfig(balance_sources=True), SimpleNamespace(meta=None), targets, split)
    np.testing.assert_allclose(one_source, [1 / 6, 1 / 4, 1 / 6, 1 / 4, 1 / 6])
