"""Clinical metrics for COVID (positive class 1) vs non-COVID (0), with bootstrap confidence intervals.

    metrics = binary_metrics(p_covid, targets, threshold=0.42, bootstrap=1000)
    metrics["sensitivity"], metrics["ci95"]["sensitivity"]      # 0.91, [0.87, 0.94]

Every metric is computed from per-image weights, so one vectorised pass scores the data
(all weights 1) and all bootstrap resamples (multinomial counts: how often each image was
drawn) at once. With patient ids (``groups``) the bootstrap draws patients, each drawn
patient bringing all of their films: films of one person are not independent samples, and
resampling them one by one makes the intervals too narrow. A rate that is undefined for the data (specificity with no non-COVID
image, AUC with one class) is ``None``, and so is its interval.

The bootstrap cannot move a rate of 0 or 1 (65 of 65 non-COVID images called so: every resample
says 1.000), and an interval of zero width claims a certainty no finite sample holds. Where the
bootstrap's interval has no width, the Wilson score interval of the metric's own count replaces it
(its images' patients, when patients repeat: the count of independent units), and ``ci95_method``
says so metric by metric.
"""

from __future__ import annotations

import numpy as np

from .seeding import stream_seed

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc",
           "average_precision", "brier", "ece")
SOURCE_METRICS = ("roc_auc", "sensitivity", "specificity", "accuracy")  # a source's row: those it has
CALIBRATION_BINS = 10
DEFAULT_THRESHOLD = 0.5


def binary_metrics(p_covid: np.ndarray, targets: np.ndarray, loss: float | None = None,
                   threshold: float = DEFAULT_THRESHOLD, bootstrap: int = 0, seed: int = 0,
                   groups: np.ndarray | None = None) -> dict:
    """Every metric of ``METRICS`` at ``threshold``, n per class, the confusion matrix, and with
    ``bootstrap`` > 0 a 95% percentile interval per metric (``ci95``) from that many resamples,
    of patients when ``groups`` gives each image's patient id, else of images (``bootstrap.unit``).

    The confusion matrix is ``[[TN, FP], [FN, TP]]`` (rows: truth, columns: prediction). ECE is
    the expected calibration error of P(COVID) over 10 equal-width bins.
    """
    p_covid, targets = np.asarray(p_covid, dtype=np.float64), np.asarray(targets).astype(np.int64)
    point = _weighted_metrics(p_covid, targets, threshold, np.ones((1, len(targets))))
    predicted = p_covid >= threshold
    matrix = [[int((~predicted & (targets == 0)).sum()), int((predicted & (targets == 0)).sum())],
              [int((~predicted & (targets == 1)).sum()), int((predicted & (targets == 1)).sum())]]
    result = {
        "loss": None if loss is None else float(loss),
        **{name: _finite_or_none(values[0]) for name, values in point.items()},
        "n": int(len(targets)),
        "n_per_class": {"non_covid": int((targets == 0).sum()), "covid": int((targets == 1).sum())},
        "threshold": float(threshold),
        "confusion_matrix": matrix,
    }
    if bootstrap > 0 and len(targets):
        unit_of_image = _units(groups, len(targets))
        result["ci95"] = bootstrap_intervals(p_covid, targets, threshold, bootstrap, seed, point, unit_of_image)
        result["ci95_method"] = _widen_degenerate(result, p_covid >= threshold, targets, unit_of_image, groups)
        result["bootstrap"] = {"resamples": int(bootstrap), "seed": int(seed), "method": "percentile",
                               "unit": "image" if groups is None else "patient",
                               "units": int(unit_of_image.max()) + 1}
    return result


Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
WILSON = "Wilson score"  # how ci95_method names an interval the bootstrap could not draw


def log_loss(p_covid: np.ndarray, targets: np.ndarray) -> float:
    """The mean negative log-likelihood of the true class (NaN for no images)."""
    p_covid = np.asarray(p_covid, dtype=np.float64)
    p_true = np.where(np.asarray(targets) == 1, p_covid, 1 - p_covid)
    return float(-np.log(np.clip(p_true, 1e-12, 1)).mean()) if len(p_true) else float("nan")


def wilson_replaced(metrics: dict) -> dict[str, str]:
    """Metric -> why its interval is a Wilson one (those marked in tables and the model card)."""
    return {name: method for name, method in metrics.get("ci95_method", {}).items() if method.startswith(WILSON)}


def wilson_interval(rate: float, count: int) -> list[float]:
    """The Wilson score 95% interval of a proportion ``rate`` observed over ``count`` units: never
    of zero width for a finite count (65 of 65: [0.944, 1])."""
    z2 = Z95 * Z95
    centre = (rate + z2 / (2 * count)) / (1 + z2 / count)
    half = Z95 / (1 + z2 / count) * np.sqrt(rate * (1 - rate) / count + z2 / (4 * count * count))
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return [0.0 if rate <= 0 else float(low), 1.0 if rate >= 1 else float(high)]  # (the observed end is exact)


def _widen_degenerate(result: dict, called: np.ndarray, targets: np.ndarray, unit_of_image: np.ndarray,
                      groups) -> dict:
    """Metric -> how its interval was drawn; a bootstrap interval of zero width (a value of 0 or 1
    every resample repeats) is replaced in ``result["ci95"]`` by the Wilson interval of the units
    the metric counts: its denominator's images (a rate), the smaller class (the class-balanced
    metrics and the ranking ones), or every image."""
    positive = targets == 1
    counted = {"accuracy": slice(None), "brier": slice(None), "ece": slice(None), "sensitivity": positive,
               "specificity": ~positive, "ppv": called, "npv": ~called}
    smaller = positive if positive.sum() <= (~positive).sum() else ~positive
    unit = "patients" if groups is not None else "images"
    methods = {}
    for name, interval in result["ci95"].items():
        value = result.get(name)
        if interval is None or value is None or interval[1] - interval[0] > 1e-12 or not 0 <= value <= 1:
            methods[name] = "percentile bootstrap" if interval is not None else "undefined"
            continue
        count = len(np.unique(unit_of_image[counted.get(name, smaller)]))
        if not count:  # a metric of one class (F1 of a COVID-only source): its own units are all of them
            count = len(np.unique(unit_of_image))
        result["ci95"][name] = wilson_interval(value, count)
        methods[name] = (f"{WILSON} over {count} {unit}: every bootstrap resample gave {value:.3f}, an "
                         "interval of zero width")
    return methods


def _units(groups: np.ndarray | None, count: int) -> np.ndarray:
    """Each image's resampling unit as 0..U-1, numbered in order of first appearance: its patient,
    or itself. (With one image a patient, the draws are those of resampling images.)"""
    if groups is None:
        return np.arange(count)
    groups = np.asarray(groups)
    if len(groups) != count:
        raise ValueError(f"{len(groups)} patient ids for {count} images")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first)] = np.arange(len(first))
    return number[inverse.reshape(-1)]


BOOTSTRAP_CHUNK_VALUES = 4_000_000  # resample weights held at once (32 MB of float64)


def bootstrap_intervals(p_covid, targets, threshold, resamples: int, seed: int, point: dict,
                        unit_of_image: np.ndarray | None = None) -> dict:
    """Percentile 95% intervals; resamples where a metric is undefined (a class not drawn) are skipped.

    ``unit_of_image`` (0..U-1 per image; default: each image its own unit): U units are drawn
    with replacement, and an image counts as often as its unit was drawn.
    """
    rng = np.random.default_rng(stream_seed(seed, "bootstrap"))
    unit_of_image = np.arange(len(targets)) if unit_of_image is None else unit_of_image
    units = int(unit_of_image.max()) + 1
    parts = []
    # Some resamples at a time (the draws are made row by row, so chunks draw the same numbers): 1000
    # resamples of a 120,000-image test split would be a 1 GB weight matrix, and its temporaries more.
    chunk = max(1, BOOTSTRAP_CHUNK_VALUES // len(targets))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        drawn_units = rng.multinomial(units, np.full(units, 1.0 / units), size=count).astype(np.float64)
        weights = drawn_units[:, unit_of_image]  # (R, n): with one image a unit, the same draws as before
        parts.append(_weighted_metrics(p_covid, targets, threshold, weights))
    drawn = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    intervals = {}
    for name, values in drawn.items():
        finite = values[np.isfinite(values)]
        defined = np.isfinite(point[name][0]) and len(finite) >= 0.9 * resamples
        intervals[name] = [float(v) for v in np.percentile(finite, [2.5, 97.5])] if defined else None
    return intervals


def _weighted_metrics(p_covid, targets, threshold, weights: np.ndarray) -> dict:
    """Each metric for each row of ``weights`` (R, n): how many times each image counts."""
    positive, predicted = targets == 1, p_covid >= threshold
    roc_auc, average_precision = _ranking_metrics(p_covid, targets, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        tp, fn = weights @ (predicted & positive), weights @ (~predicted & positive)
        tn, fp = weights @ (~predicted & ~positive), weights @ (predicted & ~positive)
        total = weights.sum(axis=1)
        sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        bins = np.eye(CALIBRATION_BINS)[np.minimum((p_covid * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)]
        calibration_gap = np.abs(weights @ (bins * targets[:, None]) - weights @ (bins * p_covid[:, None]))
        return {
            "accuracy": (tp + tn) / total,
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "roc_auc": roc_auc,
            "average_precision": average_precision,
            "brier": weights @ np.square(p_covid - targets) / total,
            "ece": calibration_gap.sum(axis=1) / total,
        }


def _ranking_metrics(p_covid, targets, weights) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC AUC and average precision for every row of ``weights`` at once.

    The same definitions as scikit-learn's ``roc_auc_score`` (ties count one half) and
    ``average_precision_score`` (step-wise, no interpolation) with ``sample_weight``, but
    vectorised over resamples: calling scikit-learn 2 x 1000 times took ~6 s per run.
    NaN where a row has no positive or no negative weight.
    """
    order = np.argsort(-p_covid, kind="stable")  # descending scores
    scores, positive = p_covid[order], targets[order] == 1
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # first index of each distinct score
    pos = np.add.reduceat(weights[:, order] * positive, starts, axis=1)  # (R, distinct), high to low
    neg = np.add.reduceat(weights[:, order] * ~positive, starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower_neg = total_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored strictly lower
        auc = (pos * (lower_neg + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        true_pos, all_pos = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
        precision = np.where(all_pos > 0, true_pos / all_pos, 0.0)
        average_precision = (pos * precision).sum(axis=1) / total_pos
    undefined = (total_pos == 0) | (total_neg == 0)
    return np.where(undefined, np.nan, auc), np.where(undefined, np.nan, average_precision)


def roc_auc(p_covid: np.ndarray, targets: np.ndarray) -> float | None:
    """ROC AUC (ties count one half); None without both classes."""
    auc, _ = _ranking_metrics(np.asarray(p_covid), np.asarray(targets), np.ones((1, len(targets))))
    return _finite_or_none(auc[0])


def per_source(p_covid: np.ndarray, targets: np.ndarray, sources: np.ndarray | None, threshold: float) -> dict:
    """Source -> n, n per class and the metrics it has, at the whole set's threshold; {} for one
    source. A pooled figure can hide a source the model fails on; a source of one class has no
    ROC AUC, only its sensitivity (COVID) or specificity (non-COVID), as in covid-ddp-report."""
    if sources is None or len(set(sources)) < 2:
        return {}
    table = {}
    for source in sorted(set(sources)):
        chosen = sources == source
        scored = binary_metrics(p_covid[chosen], targets[chosen], threshold=threshold)
        table[source] = {"n": scored["n"], "n_per_class": scored["n_per_class"],
                         **{name: scored[name] for name in SOURCE_METRICS}}
    return table


def _finite_or_none(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _counts_above(p_covid: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) when every image scored at or above each
    distinct score, highest first, is called positive."""
    order = np.argsort(p_covid, kind="mergesort")[::-1]
    scores, positive = p_covid[order], targets[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positive = np.cumsum(positive, dtype=np.float64)[last_of_each]
    return 1 + last_of_each - true_positive, true_positive, scores[last_of_each]


def roc_points(p_covid: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, after a first
    point at +inf (nothing called): scikit-learn's ``roc_curve(..., drop_intermediate=False)``,
    without its second of imports."""
    false_positive, true_positive, thresholds = _counts_above(np.asarray(p_covid), np.asarray(targets))
    false_positive, true_positive = np.r_[0, false_positive], np.r_[0, true_positive]
    with np.errstate(divide="ignore", invalid="ignore"):
        return false_positive / false_positive[-1], true_positive / true_positive[-1], np.r_[np.inf, thresholds]


def precision_recall_points(p_covid: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) from the highest threshold down, ending at (1, 0): scikit-learn's
    ``precision_recall_curve`` without its thresholds."""
    false_positive, true_positive, _ = _counts_above(np.asarray(p_covid), np.asarray(targets))
    called = true_positive + false_positive
    precision = np.divide(true_positive, called, out=np.zeros_like(true_positive), where=called != 0)
    recall = np.ones_like(true_positive) if true_positive[-1] == 0 else true_positive / true_positive[-1]
    return np.r_[precision[::-1], 1], np.r_[recall[::-1], 0]


def choose_threshold(p_covid: np.ndarray, targets: np.ndarray, target_sensitivity: float | None = None) -> dict:
    """The decision threshold, chosen on validation data: Youden's J (sensitivity + specificity - 1)
    at its maximum, or the highest threshold whose sensitivity reaches ``target_sensitivity``.

    Youden's J holds over a range of scores, between the lowest COVID score called and the next
    score below it; the threshold is the middle of that range. (Its top edge, one image's own
    score, called almost nothing COVID on small validation splits: a split of 7 images with one
    COVID put it at that image's 0.95.) Without both classes there is no ROC curve: the threshold
    stays 0.5 and the method says why.
    """
    p_covid, targets = np.asarray(p_covid), np.asarray(targets).astype(np.int64)
    if len(np.unique(targets)) < 2:
        return {"threshold": DEFAULT_THRESHOLD, "method": "default 0.5 (the validation split lacks a class)"}
    # Every distinct score is a candidate (scikit-learn's default drops points off the curve's
    # corners, which can skip the highest threshold that reaches a target sensitivity).
    false_positive, true_positive, thresholds = roc_points(p_covid, targets)
    if target_sensitivity is None:
        youden = true_positive - false_positive
        best = last = int(np.argmax(youden))  # thresholds fall along the curve: the highest of the best
        while last + 1 < len(youden) and youden[last + 1] == youden[best]:
            last += 1
        threshold = (thresholds[best] + thresholds[last + 1]) / 2 if last + 1 < len(thresholds) else thresholds[last]
        method = "youden"
    else:
        best = int(np.argmax(true_positive >= target_sensitivity))  # thresholds fall as sensitivity rises
        threshold = thresholds[best]
        method = f"sensitivity>={target_sensitivity:g}"
    if best == 0:  # roc_curve's first point (+inf: call nothing COVID) beat every real threshold
        return {"threshold": DEFAULT_THRESHOLD,
                "method": "default 0.5 (no threshold does better than chance on the validation split)"}
    called = p_covid >= threshold
    return {"threshold": float(threshold), "method": method,
            "validation_sensitivity": float(called[targets == 1].mean()),
            "validation_specificity": float((~called[targets == 0]).mean())}
