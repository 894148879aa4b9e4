"""The fine-tuner's recipe options (covid_ddp.training.recipe): the schedule's curve, the smoothed
loss, the weight average. Their resumes, exact inside an epoch: tests/test_interruptions.py
(its trials train with all of them)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from covid_ddp.training import recipe
from covid_ddp.training.config import TrainConfig, changed_flags


def _lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config.lr)
    schedule = recipe.make_schedule(optimizer, config, steps_per_epoch)
    seen = []
    for _ in range(config.epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_the_cosine_warms_up_linearly_then_falls_to_zero_over_the_run():
    lrs = _lrs(TrainConfig(lr=0.01, epochs=4, schedule="cosine", warmup_epochs=1), steps_per_epoch=10)
    assert lrs[0] == pytest.approx(0.01 / 11) and lrs[9] == pytest.approx(0.01 * 10 / 11)
    assert lrs[10] == pytest.approx(0.01), "the peak: --lr, where the warm-up ends"
    assert lrs[25] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01 * 0.003
    assert _lrs(TrainConfig(lr=0.01, epochs=2, schedule="cosine"), 5)[0] == 0.01, "no warm-up: --lr at once"


def test_the_seed_schedule_stays_on_the_monitored_loss():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    schedule = recipe.make_schedule(optimizer, TrainConfig(), 10)
    assert isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (schedule.patience, schedule.factor) == (2, 0.6) and not recipe.steps_every_optimizer_step(schedule)


def test_label_smoothing_trains_against_softened_targets_and_zero_is_the_recipes_nll():
    log_probs = torch.log_softmax(torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, 1.0]]), dim=1)
    targets = torch.tensor([0, 1, 1])
    assert torch.equal(recipe.training_loss(log_probs, targets, 0.0), F.nll_loss(log_probs, targets))
    smoothed = recipe.training_loss(log_probs, targets, 0.1)
    by_hand = (0.9 * -log_probs.gather(1, targets[:, None]).squeeze(1) - 0.05 * log_probs.sum(dim=1)).mean()
    assert smoothed.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_the_weight_average_follows_every_step_and_copies_counts():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = recipe.WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    average.update(model)
    assert torch.allclose(average.module[0].weight, start + 0.1)
    assert average.module[1].num_batches_tracked.item() == 5
    assert not any(p.requires_grad for p in average.module.parameters())


def test_a_cosine_runs_epochs_are_part_of_its_recipe_at_a_resume():
    recorded = TrainConfig(schedule="cosine", epochs=10).to_dict()
    assert changed_flags(recorded, TrainConfig(schedule="cosine", epochs=12)) == {"--epochs": (10, 12)}
    plateau = TrainConfig(epochs=10).to_dict()
    assert changed_flags(plateau, TrainConfig(epochs=12)) == {}, "the seed's recipe trains on to any --epochs"


def test_warmup_needs_the_cosine_and_the_average_a_decay_below_one():
    from covid_ddp.errors import UserError
    from covid_ddp.training.config import parse_config

    with pytest.raises(UserError, match="--warmup-epochs warms up the cosine schedule: add --schedule cosine"):
        parse_config(["--warmup-epochs", "1"])
    with pytest.raises(UserError, match=r"--ema must be between 0 and 1 \(exclusive\), got 1.0"):
        parse_config(["--ema", "1"])
