"""Clinical metrics: agreement with scikit-learn, bootstrap intervals, threshold choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from covid_ddp.metrics import METRICS, binary_metrics, choose_threshold, precision_recall_points, roc_points


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    targets = (rng.random(600) < 0.3).astype(np.int64)
    p_covid = np.clip(0.35 * targets + rng.random(600) * 0.65, 0, 1)  # overlapping: no metric is trivial
    return p_covid, targets


def test_point_values_agree_with_scikit_learn(scores):
    p_covid, targets = scores
    result = binary_metrics(p_covid, targets, threshold=0.5)
    predicted = p_covid >= 0.5
    tn, fp, fn, tp = sk.confusion_matrix(targets, predicted).ravel()
    assert result["confusion_matrix"] == [[tn, fp], [fn, tp]]
    expected = {
        "accuracy": sk.accuracy_score(targets, predicted),
        "balanced_accuracy": sk.balanced_accuracy_score(targets, predicted),
        "sensitivity": sk.recall_score(targets, predicted),
        "specificity": sk.recall_score(targets, predicted, pos_label=0),
        "ppv": sk.precision_score(targets, predicted),
        "npv": sk.precision_score(targets, predicted, pos_label=0),
        "f1": sk.f1_score(targets, predicted),
        "roc_auc": sk.roc_auc_score(targets, p_covid),
        "average_precision": sk.average_precision_score(targets, p_covid),
        "brier": sk.brier_score_loss(targets, p_covid),
    }
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert result["n_per_class"] == {"non_covid": int((targets == 0).sum()), "covid": int(targets.sum())}


@pytest.mark.parametrize("ties", [False, True])
def test_our_curves_are_scikit_learns_point_for_point(scores, ties):
    """The threshold and the figures use curves of our own (no scikit-learn import in a run)."""
    p_covid, targets = scores
    p_covid = np.round(p_covid, 1) if ties else p_covid
    for got, expected in zip(roc_points(p_covid, targets), sk.roc_curve(targets, p_covid, drop_intermediate=False)):
        assert np.array_equal(got[1:], expected[1:]) and got[0] == expected[0] or not np.isfinite(got[0])
    precision, recall, _ = sk.precision_recall_curve(targets, p_covid)
    assert all(np.allclose(a, b, rtol=0, atol=1e-15) for a, b in zip(precision_recall_points(p_covid, targets),
                                                                      (precision, recall)))


def test_expected_calibration_error_by_hand():
    # Bin [0.1, 0.2): p 0.1, 0.1 with 1 of 2 positive: |0.5 - 0.1| * 2/4. Bin [0.9, 1]: p 0.9, 0.9, both
    # positive: |1.0 - 0.9| * 2/4. ECE = 0.2 + 0.05.
    result = binary_metrics(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1]))
    assert result["ece"] == pytest.approx(0.25)


def test_intervals_are_seeded_and_bracket_the_point_value(scores):
    p_covid, targets = scores
    first = binary_metrics(p_covid, targets, bootstrap=300, seed=4)
    assert first["ci95"] == binary_metrics(p_covid, targets, bootstrap=300, seed=4)["ci95"]
    assert first["ci95"] != binary_metrics(p_covid, targets, bootstrap=300, seed=5)["ci95"]
    for name in METRICS:
        low, high = first["ci95"][name]
        assert low <= first[name] <= high, name
        assert high - low < 0.3, name
    small = binary_metrics(p_covid[:60], targets[:60], bootstrap=300, seed=4)["ci95"]["sensitivity"]
    assert small[1] - small[0] > first["ci95"]["sensitivity"][1] - first["ci95"]["sensitivity"][0]


def test_intervals_drawn_in_chunks_are_those_drawn_at_once(scores, monkeypatch):
    """A large test split draws its resamples some at a time (bounded memory): the same draws, so the
    same intervals (to float rounding: BLAS sums a 37-row block in another order than a 200-row one)."""
    from covid_ddp import metrics

    p_covid, targets = scores
    patients = np.arange(len(targets)) // 3
    at_once = binary_metrics(p_covid, targets, bootstrap=200, seed=4, groups=patients)["ci95"]
    monkeypatch.setattr(metrics, "BOOTSTRAP_CHUNK_VALUES", 37 * len(targets))  # 37 resamples a chunk, 200 in all
    chunked = binary_metrics(p_covid, targets, bootstrap=200, seed=4, groups=patients)["ci95"]
    assert chunked.keys() == at_once.keys()
    for name, interval in at_once.items():
        np.testing.assert_allclose(chunked[name], interval, rtol=1e-12, err_msg=name)


def test_patient_level_intervals_do_not_shrink_when_each_patients_films_are_repeated():
    """Four films of every patient add no information about new patients: resampled by patient, the
    intervals stay as wide as with one film each; resampled by image, they shrink by about half."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 150)
    p_covid = np.clip(0.5 + 0.3 * (targets - 0.5) + rng.normal(0, 0.25, 150), 0, 1)
    patients = np.array([f"p{i}" for i in range(150)])
    once = binary_metrics(p_covid, targets, bootstrap=400, groups=patients)
    films = lambda values: np.repeat(values, 4)  # noqa: E731
    by_patient = binary_metrics(films(p_covid), films(targets), bootstrap=400, groups=films(patients))
    by_image = binary_metrics(films(p_covid), films(targets), bootstrap=400)
    assert by_patient["bootstrap"]["unit"] == "patient" and by_patient["bootstrap"]["units"] == 150
    assert by_image["bootstrap"]["unit"] == "image" and by_image["bootstrap"]["units"] == 600
    width = lambda result, name: np.subtract(*result["ci95"][name][::-1])  # noqa: E731
    for name in ("roc_auc", "sensitivity", "accuracy"):
        assert width(by_patient, name) == pytest.approx(width(once, name), rel=0.1), name
        assert width(by_image, name) < 0.65 * width(once, name), name
    # One film a patient: the same draws as resampling images.
    assert once["ci95"] == binary_metrics(p_covid, targets, bootstrap=400)["ci95"]


def test_undefined_rates_are_none_not_a_number():
    """A held-out source with COVID images only (hannover in real-cxr): no specificity, no AUC."""
    result = binary_metrics(np.array([0.9, 0.2, 0.7]), np.array([1, 1, 1]), bootstrap=50)
    assert result["specificity"] is None and result["roc_auc"] is None and result["average_precision"] is None
    assert result["npv"] == 0.0, "defined: the one predicted negative is a missed COVID case"
    assert result["ci95"]["specificity"] is None and result["ci95"]["roc_auc"] is None
    assert result["sensitivity"] == pytest.approx(2 / 3)


def test_threshold_at_youden_and_at_a_target_sensitivity():
    p_covid = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8])
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    youden = choose_threshold(p_covid, targets)
    # J = 0.75 at 0.6 (and again at 0.35): the middle of the first range that reaches it, 0.6 down to 0.4
    assert youden["method"] == "youden" and youden["threshold"] == pytest.approx(0.5)
    assert (youden["validation_sensitivity"], youden["validation_specificity"]) == (0.75, 1.0)
    sensitive = choose_threshold(p_covid, targets, target_sensitivity=1.0)
    assert sensitive["threshold"] == pytest.approx(0.35) and sensitive["validation_sensitivity"] == 1.0
    assert choose_threshold(p_covid[:4], targets[:4])["threshold"] == 0.5, "one class: no ROC, the default"


def test_resampled_ranking_metrics_equal_scikit_learn_with_sample_weights(scores):
    """The bootstrap scores each resample as weights; with ties in the scores."""
    from covid_ddp.metrics import _ranking_metrics

    p_covid, targets = scores
    p_covid = np.round(p_covid, 2)  # many ties
    weights = np.random.default_rng(1).multinomial(len(targets), np.full(len(targets), 1 / len(targets)), size=5)
    auc, average_precision = _ranking_metrics(p_covid, targets, weights.astype(float))
    for row, weight in enumerate(weights):
        assert auc[row] == pytest.approx(sk.roc_auc_score(targets, p_covid, sample_weight=weight), abs=1e-12)
        expected_ap = sk.average_precision_score(targets, p_covid, sample_weight=weight)
        assert average_precision[row] == pytest.approx(expected_ap, abs=1e-12)


def test_a_target_sensitivity_takes_the_highest_threshold_reaching_it():
    """Every distinct score is a candidate (roc_curve would otherwise drop collinear points)."""
    p_covid = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    targets = np.array([1, 1, 1, 1, 0, 0])
    chosen = choose_threshold(p_covid, targets, target_sensitivity=0.5)
    assert chosen["threshold"] == pytest.approx(0.8) and chosen["validation_sensitivity"] == 0.5


def test_youden_on_a_tiny_split_takes_the_middle_of_the_scores_that_reach_it():
    """7 validation images, one COVID: every threshold from its score (0.95) down to just above the
    best-scored non-COVID image (0.30) separates them; the top edge would call almost nothing COVID."""
    p_covid = np.array([0.95, 0.30, 0.20, 0.12, 0.10, 0.05, 0.01])
    chosen = choose_threshold(p_covid, np.array([1, 0, 0, 0, 0, 0, 0]))
    assert chosen["threshold"] == pytest.approx(0.625)
    assert (chosen["validation_sensitivity"], chosen["validation_specificity"]) == (1.0, 1.0)


def test_youden_reached_by_adjacent_scores_takes_the_middle_of_them_all():
    """A tied score of one COVID and one non-COVID image keeps J (0.5 at 0.9 and at 0.6): the range
    runs from 0.9 down to the next score, 0.2."""
    chosen = choose_threshold(np.array([0.9, 0.6, 0.6, 0.2]), np.array([1, 1, 0, 0]))
    assert chosen["threshold"] == pytest.approx(0.55)
    assert (chosen["validation_sensitivity"], chosen["validation_specificity"]) == (1.0, 0.5)


def test_a_model_no_better_than_chance_keeps_the_default_threshold():
    chosen = choose_threshold(np.array([0.9, 0.1, 0.8, 0.2]), np.array([0, 1, 0, 1]))
    assert chosen["threshold"] == 0.5 and "better than chance" in chosen["method"]


def test_a_rate_of_one_gets_a_wilson_interval_not_one_of_zero_width(capsys):
    """65 of 65 non-COVID images called non-COVID: every bootstrap resample says 1.000. The interval
    is the Wilson score interval of 65 (the exact binomial one is [0.945, 1]), named as such."""
    rng = np.random.default_rng(0)
    targets = np.r_[np.zeros(65), np.ones(35)].astype(int)
    p_covid = np.where(targets == 1, rng.uniform(0.3, 1, 100), rng.uniform(0, 0.4, 100))
    scored = binary_metrics(p_covid, targets, threshold=0.45, bootstrap=200)
    assert scored["specificity"] == 1.0 and scored["ci95"]["specificity"] == pytest.approx([0.9442, 1.0], abs=1e-4)
    assert scored["ci95_method"]["specificity"].startswith("Wilson score over 65 images")
    assert scored["ci95_method"]["sensitivity"] == "percentile bootstrap", "a rate the bootstrap moves keeps its interval"
    assert all(high - low > 0 for low, high in filter(None, scored["ci95"].values())), "no interval of zero width"
    # Films of one patient are not independent: 65 images of 13 patients count 13.
    patients = np.r_[np.arange(65) // 5, 100 + np.arange(35)]
    clustered = binary_metrics(p_covid, targets, threshold=0.45, bootstrap=200, groups=patients)
    assert clustered["ci95"]["specificity"][0] == pytest.approx(13 / (13 + 1.959963984540054 ** 2), abs=1e-9)
    assert "over 13 patients" in clustered["ci95_method"]["specificity"]
    # Where it is read: covid-ddp-evaluate's table and the model card mark and name it.
    from covid_ddp.commands.evaluate import format_table
    from covid_ddp.evaluation.model_card import _results_section

    table = format_table(scored, "test")
    assert "specificity            1.000   [0.944, 1.000] *" in table and "* Wilson score interval" in table
    card = "\n".join(_results_section({"test": scored}, Path("/nonexistent")))
    assert "| specificity | 1.000 | 0.944 - 1.000 * |" in card and "specificity: Wilson score over 65 images" in card


def test_a_one_class_set_with_a_rate_of_one_gets_an_interval_too():
    """A COVID-only source all called COVID: sensitivity and F1 are 1, the non-COVID class empty."""
    targets = np.ones(30, dtype=int)
    scored = binary_metrics(np.full(30, 0.9), targets, threshold=0.5, bootstrap=50)
    assert scored["sensitivity"] == 1.0 and scored["ci95"]["sensitivity"][0] == pytest.approx(30 / (30 + 1.96 ** 2), abs=1e-3)
    assert scored["f1"] == 1.0 and scored["ci95"]["f1"][1] == 1.0 and scored["ci95"]["f1"][0] < 1.0
