"""Temperature scaling: fitted on validation by log-loss, folded into the shipped weights' last layer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import small_args

from covid_ddp import load_model, predict
from covid_ddp.calibration import HIGHEST, LOWEST, fit_temperature, fold_temperature, scaled
from covid_ddp.commands.train import main as train_main
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.metrics import binary_metrics
from covid_ddp.training.finish import calibrate


@pytest.fixture(scope="module")
def calibrated_run(small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("calibrated") / "run"
    assert train_main([str(a) for a in small_args(small_data, run_dir, "--epochs", "1", "--audit", "no")]) == 0
    return run_dir


def test_the_temperature_recovers_a_known_one_and_keeps_the_ranking():
    """Scores made 4x over-confident on purpose: T comes out near 4, and with it ECE drops while
    ROC AUC stays to the last digit."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 4000)  # (no score so extreme that 4x its logit is clipped)
    targets = (rng.random(4000) < truth).astype(int)  # calibrated by construction: P(COVID) = truth
    overconfident = scaled(truth, 1 / 4)
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(4, rel=0.1)
    before, after = (binary_metrics(p, targets) for p in (overconfident, scaled(overconfident, temperature)))
    assert after["ece"] < before["ece"] / 3 and after["roc_auc"] == pytest.approx(before["roc_auc"], abs=1e-12)
    assert fit_temperature(overconfident, np.zeros(4000, int)) == 1.0, "one class: nothing to fit"


def test_a_run_ships_calibrated_weights_and_records_the_temperature(calibrated_run, small_data):
    """The temperature is folded into fc2: every command (and the original Net) scores calibrated
    probabilities; metrics.json and the sidecar record it and the calibration before and after."""
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    calibration = metrics["calibration"]
    temperature = calibration["temperature"]
    assert calibration["method"] == "temperature" and 0.05 <= temperature <= 20
    ece_before, ece_after = calibration["validation"]["ece"]
    assert calibration["validation"]["log_loss"][1] <= calibration["validation"]["log_loss"][0] + 1e-9, \
        "the temperature minimises the validation log-loss (T = 1 is among those tried)"
    assert len(calibration["test"]["brier"]) == 2 and ece_before >= 0 and ece_after >= 0
    assert json.loads((calibrated_run / "COVID_binary_classifier.json").read_text())["temperature"] == temperature
    # Made 8x over-confident on purpose (fc2 times 8), the validation split's fit gives the 8 back.
    weights = torch.load(calibrated_run / "COVID_binary_classifier.pth", weights_only=True)
    sharp = fold_temperature(weights, "fc2", 1 / 8)
    torch.save(sharp, calibrated_run.parent / "sharp.pth")
    data = load_data_dir(small_data)
    with np.load(calibrated_run / "splits.npz") as parts:
        rows = parts["val"]
    targets = to_binary(data.labels)[rows]
    p_shipped = predict(load_model(calibrated_run / "COVID_binary_classifier.pth"), data.images[rows])
    left_to_fit = fit_temperature(p_shipped, targets)
    if LOWEST * 1.01 < temperature < HIGHEST / 1.01:  # the run's own fit did not end at a bound of the search
        assert left_to_fit == pytest.approx(1, rel=0.05), "the shipped weights are calibrated already"
    # (A run whose scores needed more than the 20x sharpening searched, as this one-epoch fp32 run's
    # can, ships them 20x sharper and still under-confident: its refit is below 1, and the 8 multiplies it.)
    p_sharp = predict(load_model(calibrated_run.parent / "sharp.pth"), data.images[rows])
    refit = fit_temperature(p_sharp, targets)
    assert refit == pytest.approx(8 * left_to_fit, rel=0.05)
    before, after = binary_metrics(p_sharp, targets), binary_metrics(scaled(p_sharp, refit), targets)
    assert after["ece"] < before["ece"] and after["roc_auc"] == pytest.approx(before["roc_auc"], abs=1e-9)


def test_calibration_none_or_no_validation_split_leaves_the_weights_as_trained():
    weights = {"fc2.weight": torch.ones(2, 3), "fc2.bias": torch.ones(2)}
    for run, config in ((SimpleNamespace(monitor_name="Validation"), SimpleNamespace(calibration="none")),
                        (SimpleNamespace(monitor_name="Test"), SimpleNamespace(calibration="temperature"))):
        kept, record, monitored = calibrate(weights, run, None, config, "scores")
        assert kept is weights and record is None and monitored == "scores"


def test_evaluate_draws_the_reliability_curve_before_and_after_the_temperature(calibrated_run, tmp_path, monkeypatch):
    from covid_ddp import figures
    from covid_ddp.commands.evaluate import main as evaluate_main

    drawn, real = [], figures.calibration_figure
    monkeypatch.setattr(figures, "calibration_figure", lambda p, targets, before=None: drawn.append(before) or
                        real(p, targets, before=before))
    assert evaluate_main(["--weights", str(calibrated_run / "COVID_binary_classifier.pth"), "--bootstrap", "0",
                          "--output-dir", str(tmp_path / "eval")]) == 0
    ((scores, label),) = drawn
    temperature = json.loads((calibrated_run / "metrics.json").read_text())["calibration"]["temperature"]
    assert label == f"before temperature scaling (T = {temperature:.2f})" and len(scores) > 0
