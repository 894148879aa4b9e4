"""The epoch a run ships (--select-by, --early-stop) and the batch size of a small training part.

The end-to-end runs diverge on purpose (faulty_train's ``blowup:1``: the learning rate jumps to
0.05 after epoch 1), so the best validation epoch is 1 and not the last, and a stop inside
epoch 2 must come back with epoch 1's weights kept.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import HELPERS, TRAIN_SCRIPT, run, write_mcfam

from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.errors import UserError
from covid_ddp.training.checkpoint import BEST_MODEL_STATE, complete_checkpoints
from covid_ddp.training.config import TrainConfig, batch_size_for, settle_batch_size, settle_batches
from covid_ddp.training.selection import Selection


def history(*values, key="validation_loss"):
    return [{"epoch": epoch, key: value} for epoch, value in enumerate(values, start=1)]


# --- the rule -------------------------------------------------------------------------------------


def test_the_lowest_loss_or_highest_auc_wins_and_a_tie_keeps_the_earlier_epoch():
    assert Selection("loss").best_epoch(history(0.7, 0.5, 0.5, 0.6)) == 2
    assert Selection("auc").best_epoch(history(0.7, 0.9, 0.9, 0.8, key="validation_auc")) == 2


def test_an_undefined_metric_never_counts_as_best():
    assert Selection("auc").best_epoch(history(None, 0.6, float("nan"), key="validation_auc")) == 2
    assert Selection("loss").best_epoch(history(float("nan"))) is None
    assert Selection("loss").describe(history(float("nan")), 1, 1) == \
        "the last epoch's weights (epoch 1): no epoch had a defined validation loss"


def test_early_stop_counts_epochs_since_the_best():
    rule = Selection("loss", patience=2)
    assert not rule.stops_after(history(0.7, 0.5, 0.6))
    assert rule.stops_after(history(0.7, 0.5, 0.6, 0.55))
    assert not Selection("loss").stops_after(history(0.7, 0.8, 0.9, 1.0)), "no --early-stop: never"


def test_without_a_validation_split_or_with_last_the_last_epoch_is_shipped():
    for rule in (Selection.for_run("loss", None, has_validation=False), Selection.for_run("last", None, True)):
        assert rule.criterion is None and rule.best_epoch(history(0.5, 0.9)) is None
        assert rule.describe(history(0.5, 0.9), 2, 2) == "the last epoch's weights (epoch 2)"


def test_the_run_never_claims_an_epoch_it_did_not_ship():
    """A run resumed from a covid_ddp 0.2 checkpoint kept no best weights: the last epoch is shipped, and said so."""
    rule, record = Selection("loss"), history(0.5, 0.7, 0.6)
    assert rule.describe(record, 3, 1) == "the weights of epoch 1 of 3, lowest validation loss (0.5000)"
    assert rule.describe(record, 3, 3) == "the last epoch's weights (epoch 3): those of epoch 1, the best, were not kept"


def test_a_resume_that_changes_select_by_ships_the_epoch_it_names_or_is_refused():
    """Stopped in epoch 3 with --select-by loss (best loss: epoch 2, best AUC: epoch 1), resumed with auc."""
    from covid_ddp.errors import UserError

    record = [{"epoch": 1, "validation_loss": 0.6, "validation_auc": 0.9},
              {"epoch": 2, "validation_loss": 0.5, "validation_auc": 0.8}]
    with pytest.raises(UserError, match=r"--select-by auc at a resume: the best epoch so far by it is epoch 1, whose "
                                        r"weights the run did not keep \(it kept epoch 2's, the best by --select-by "
                                        r"loss\); resume with --select-by loss"):
        Selection("auc").check_kept(record, kept=2, old_select_by="loss")
    with pytest.raises(UserError, match="--select-by last keeps none"):
        Selection("loss").check_kept(record, kept=None, old_select_by="last")
    Selection("loss").check_kept(record, kept=2, old_select_by="auc")  # the kept weights are the new rule's best
    Selection(None).check_kept(record, kept=2, old_select_by="loss")  # --select-by last needs nothing kept
    # Whatever was kept, the epoch shipped is the one described: never one rule's weights under another's name.
    record.append({"epoch": 3, "validation_loss": 0.7, "validation_auc": 0.7})
    for rule, kept in ((Selection("auc"), 2), (Selection("loss"), 2), (Selection("loss"), None), (Selection(None), 1)):
        shipped = rule.shipped_epoch(record, kept, last=3)
        assert f"epoch {shipped}" in rule.describe(record, 3, shipped), (rule, kept)
    assert Selection("auc").shipped_epoch(record, 2, last=3) == 3 and Selection("loss").shipped_epoch(record, 2, 3) == 2


def test_early_stop_needs_a_validation_split():
    from covid_ddp.errors import UserError

    with pytest.raises(UserError, match="--early-stop watches the validation split"):
        TrainConfig(early_stop=3, val_size=0).validate()


# --- the batch size of a small training part ------------------------------------------------------


@pytest.mark.parametrize("train_images, expected", [(6300, 100), (1000, 100), (999, 64), (630, 32), (189, 16),
                                                    (100, 8), (40, 8)])
def test_the_default_batch_gives_an_epoch_ten_steps(train_images, expected):
    """MCFAM's 6,300 training images keep the recipe's 100; a small set gets the largest of
    64/32/16/8 with 10 steps an epoch (8 at the least)."""
    assert batch_size_for(train_images) == expected


@pytest.mark.parametrize("processes, recipe, small", [(1, 100, 16), (2, 100, 16), (3, 99, 15), (4, 100, 16), (5, 100, 15),
                                                      (6, 96, 12), (7, 98, 14), (8, 96, 16), (12, 96, 12), (16, 96, 16)])
def test_the_default_batch_is_shared_evenly_by_any_process_count(processes, recipe, small):
    """The nodes users run hold 3 to 8 GPUs, jobs span nodes: the default global batch (the
    recipe's 100, or a small set's) is the largest multiple of the process count up to it."""
    assert batch_size_for(6300, processes) == recipe and batch_size_for(189, processes) == small
    settled, note = settle_batches(TrainConfig(), 6300, processes, "cpu")
    assert (settled.batch_size, settled.eval_batch_size) == (recipe, 32 * processes)
    assert (note is None) == (recipe == 100)
    if note:
        assert note == (f"note: batch size {recipe} instead of the recipe's 100, a global batch the {processes} "
                        f"processes share evenly ({recipe // processes} each); --batch-size sets it")


def test_a_small_set_is_told_its_batch_size_and_a_short_epoch_is_warned_of():
    settled, note = settle_batch_size(TrainConfig(), 189)
    assert settled.batch_size == 16 and note.startswith("note: 189 training images: batch size 16 instead of the "
                                                        "recipe's 100, for 11 steps an epoch (100 would give 1)")
    settled, note = settle_batch_size(TrainConfig(batch_size=100), 189)
    assert settled.batch_size == 100
    assert note == ("warning: 189 training images at --batch-size 100: 1 optimizer step an epoch, and 89 images left "
                    "out of each epoch by the last partial batch; --batch-size 16 gives 11 steps")
    assert settle_batch_size(TrainConfig(), 6300) == (TrainConfig(batch_size=100), None), "MCFAM: silent, as before"


def test_both_batch_sizes_are_settled_in_one_place_and_a_given_one_that_cannot_be_shared_is_refused():
    """The evaluation batch: --eval-batch-size, else 32 per CPU process and 1000 per GPU; both
    batches global; one the user gives that the processes cannot share is refused in one line
    naming the multiples that would do."""
    settled, _ = settle_batches(TrainConfig(), 6300, 2, "cpu")
    assert (settled.batch_size, settled.eval_batch_size) == (100, 64)
    assert settle_batches(TrainConfig(), 6300, 4, "cuda")[0].eval_batch_size == 4000
    assert settle_batches(TrainConfig(batch_size=30, eval_batch_size=30), 6300, 3, "cuda")[0].eval_batch_size == 30
    with pytest.raises(UserError, match=r"^--batch-size 100 is global and does not divide evenly over 3 processes; "
                                        r"give a multiple of 3 \(99 or 102\), or leave it out$"):
        settle_batches(TrainConfig(batch_size=100), 6300, 3, "cpu")
    with pytest.raises(UserError, match=r"^--eval-batch-size 31 .* over 3 processes; give a multiple of 3 \(30 or 33\)"):
        settle_batches(TrainConfig(batch_size=30, eval_batch_size=31), 6300, 3, "cpu")


# --- end to end: the best epoch shipped, an early stop, and both across a stop inside an epoch ------

# 400 synthetic images: 252 training images, batch 16 by default (15 steps an epoch).
FLAGS = ("--epochs", "6", "--select-by", "auc", "--early-stop", "1", "--log-every", "5", "--mixed-precision", "no",
         "--log-images-every", "0", "--bootstrap", "0", "--eval-batch-size", "60")
STOP_IN_EPOCH_2 = "sigterm:20"  # after step 5 of epoch 2 (15 + 5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mcfam(tmp_path_factory.mktemp("data"), *make_synthetic(400, seed=3))


def _train(data, run_dir, faults=None, *extra, check=True):
    script = [HELPERS / "faulty_train.py", faults] if faults else [TRAIN_SCRIPT]
    return run([sys.executable, *script, "--data-dir", data, "--output-dir", run_dir, *FLAGS, *extra], check=check)


@pytest.fixture(scope="module")
def diverging_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diverging") / "run"
    return run_dir, _train(data, run_dir, "blowup:1")


def test_the_best_epoch_is_shipped_with_its_threshold_and_the_run_stops_early(diverging_run, data, tmp_path):
    run_dir, result = diverging_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    aucs = [record["validation_auc"] for record in metrics["history"]]
    assert len(aucs) == 2 and aucs[0] > aucs[1], f"epoch 1 best, epoch 2 worse, then stopped: {aucs}"
    assert metrics["shipped"] == {"epoch": 1, "select_by": "auc", "stopped_early": True, "why": (
        f"the weights of epoch 1 of 2, highest validation ROC AUC ({aucs[0]:.4f}) (stopped early after epoch 2: "
        "no improvement in 1 epoch)")}
    assert f"Shipping {metrics['shipped']['why']}" in result.stdout
    assert json.loads((run_dir / "COVID_binary_classifier.json").read_text())["epoch"] == 1
    # The shipped file holds epoch 1's weights: scored again, its validation AUC is epoch 1's.
    assert evaluate_main(["--weights", str(run_dir / "COVID_binary_classifier.pth"), "--split", "val",
                          "--bootstrap", "0", "--output-dir", str(tmp_path / "val")]) == 0
    scored = json.loads((tmp_path / "val" / "evaluation.json").read_text())["metrics"]["roc_auc"]
    assert math.isclose(scored, aucs[0], abs_tol=1e-6) and not math.isclose(scored, aucs[-1], abs_tol=1e-3)
    note = "covid-ddp-train: note: 252 training images: batch size 16 instead of the recipe's 100"
    assert result.stderr.count(note) == 1 and "Train Epoch: 1 [240/252 (95%)]" in result.stdout
    assert json.loads((run_dir / "config.json").read_text())["config"]["batch_size"] == 16


def test_a_stop_inside_an_epoch_after_the_best_one_ships_the_same_weights(diverging_run, data, tmp_path):
    reference_dir, _ = diverging_run
    run_dir = tmp_path / "run"
    stopped = _train(data, run_dir, f"blowup:1,{STOP_IN_EPOCH_2}", check=False)
    assert "stopped by SIGTERM at epoch 2, step 5" in stopped.stderr, stopped.stderr[-2000:]
    checkpoint = complete_checkpoints(run_dir)[-1]
    assert checkpoint.name == "epoch_002_step_00005" and (checkpoint / BEST_MODEL_STATE).is_file()
    resumed = _train(data, run_dir, None, "--resume", "auto")  # the raised learning rate is in the optimizer state
    assert "Shipping the weights of epoch 1 of 2" in resumed.stdout
    for name in ("COVID_binary_classifier.pth",):
        reference = torch.load(reference_dir / name, weights_only=True)
        resumed_weights = torch.load(run_dir / name, weights_only=True)
        assert all(torch.equal(reference[key], resumed_weights[key]) for key in reference)
    again = _train(data, run_dir, None, "--resume", "auto")
    assert "is finished (stopped early): nothing to do" in again.stdout
    latest = _train(data, run_dir, None, "--resume", "latest", check=False)
    assert latest.returncode == 2 and "(stopped early); pass a larger --epochs or --early-stop" in latest.stderr
