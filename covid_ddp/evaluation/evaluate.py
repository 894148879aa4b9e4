"""Scoring trained weights on a data set, the way a reader of a paper would want: ``evaluate()``.

``evaluation.json`` (every metric with its 95% bootstrap interval, the threshold and where it came
from, the rows scored) and ``roc.png``, ``pr.png``, ``confusion.png``, ``calibration.png``; with images
of several sources (meta.npz ``dataset``, or each --data-dir folder's name), each source's metrics
too. ``test`` and ``val`` are the weights' own run's parts (``run_data``); ``all`` scores every
image, for a data set the run never saw. Runs on one device. Not for clinical use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import figures
from ..calibration import scaled
from ..bounds import BOOTSTRAP, SEED
from ..data.format import to_binary
from ..data.splits import patient_ids, source_names
from ..destinations import check_output_folder, either, is_own_figure, record_of, refuse_inputs
from ..errors import UserError
from ..files import write_json
from ..metrics import binary_metrics, log_loss, per_source
from ..models.inference import resolve_device
from ..models.weights import decision_threshold, read_sidecar
from ..predictions import PREDICTIONS_FILE, predictions_table, write_predictions
from ..subgroups import subgroup_columns, subgroup_table
from .ensemble import Ensemble, common_split, ensemble_threshold
from .run_data import bootstrap_seed, load_evaluation_data, rows_to_score

FIGURES = ("roc.png", "pr.png", "confusion.png", "calibration.png")
RECORD = "evaluation.json"
SPLITS = ("test", "val", "all")


@dataclass(frozen=True)
class EvaluationResult:
    """What ``evaluate`` returns (and ``evaluation.json`` in ``folder`` holds)."""

    folder: Path  # evaluation.json and the figures
    split: str
    threshold: float
    threshold_source: str  # where the threshold came from
    metrics: dict  # every metric, with its 95% bootstrap interval
    per_source: dict | None  # the same per source, for images of several sources
    rows: np.ndarray  # the rows of the data that were scored
    subgroups: dict | None = None  # column -> value -> n, ROC AUC, sensitivity, specificity, intervals


def evaluate(weights: str | Path | list, data_dir: str | list | None = None, split: str = "test",
             output_dir: str | Path | None = None, threshold: float | None = None, bootstrap: int = 1000,
             device: str = "auto", seed: int | None = None, subgroups: list[str] | None = None) -> EvaluationResult:
    """Score ``weights`` (several: their ensemble) on ``split`` of ``data_dir`` (default: the data
    their run trained on) and write ``evaluation.json`` and the figures into ``output_dir``
    (default: ``evaluation-<split>`` beside the weights). ``test`` and ``val`` are the run's own
    parts, the rows of its splits.npz; ``all`` is every image. The intervals are drawn with
    ``seed``, by default the (first) run's --seed, as training drew its own. ``subgroups``: the
    meta.npz columns to break the results down by (default: every one that makes subgroups)."""
    weights = [Path(path) for path in (weights if isinstance(weights, (list, tuple)) else [weights])]
    data_dirs = [str(folder) for folder in ([data_dir] if isinstance(data_dir, (str, Path)) else data_dir)] \
        if data_dir is not None else None
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    BOOTSTRAP.check(bootstrap, "bootstrap")  # (a threshold is checked where it is used: decision_threshold)
    if seed is not None:
        SEED.check(seed, "seed")
    ensemble = Ensemble.load(weights, resolve_device(device))  # one run, or the mean of several
    output = Path(output_dir) if output_dir else evaluation_folder(split, weights)
    check_destination(output, data_dirs, weights)
    common = None
    if len(weights) > 1 and (split != "all" or threshold is None):
        common = common_split(weights)  # its rows, or its threshold: refused before anything is read if the runs differ
    data = load_evaluation_data(data_dirs, weights[0])
    rows = rows_to_score(split, weights[0], data)
    if len(weights) == 1 or threshold is not None:
        threshold, threshold_source = decision_threshold(threshold, weights[0])
    else:  # an ensemble's own threshold, on its runs' common validation split
        threshold, threshold_source = ensemble_threshold(
            ensemble, lambda: data if data_dirs is None else load_evaluation_data(None, weights[0]), common)
    p_covid = ensemble.predict(data.images, rows=rows)
    targets = to_binary(data.labels)[rows]
    seed = bootstrap_seed(weights[0]) if seed is None else seed
    patients = patient_ids(data.meta, rows)
    metrics = binary_metrics(p_covid, targets, log_loss(p_covid, targets), threshold, bootstrap, seed, groups=patients)
    by_source = per_source(p_covid, targets, source_names(data.meta, rows), threshold)
    by_subgroup = subgroup_table(p_covid, targets, subgroup_columns(data.meta, rows, subgroups), threshold, bootstrap,
                                 seed, patients)
    write_json(output / RECORD, {
        "weights": str(weights[0]) if len(weights) == 1 else [str(path) for path in weights],
        "data": data.provenance, "split": split, "threshold_source": threshold_source,
        "metrics": metrics, **({"per_source": by_source} if by_source else {}),
        **({"subgroups": by_subgroup} if by_subgroup else {}), "rows": rows.tolist()})
    write_predictions(output, predictions_table(rows, p_covid, targets, threshold, data.meta))
    write_figures(output, p_covid, targets, metrics, read_sidecar(weights[0]) if len(weights) == 1 else None)
    return EvaluationResult(output, split, threshold, threshold_source, metrics, by_source or None, rows,
                            by_subgroup or None)


def evaluation_folder(split: str, weights: list[Path]) -> Path:
    """A run's evaluation in its folder, an ensemble's beside the runs' folders."""
    if len(weights) == 1:
        return weights[0].parent / f"evaluation-{split}"
    return weights[0].parent.parent / f"ensemble-evaluation-{split}"


def check_destination(output_dir: Path, data_dirs: list[str] | None, weights: list[Path]) -> None:
    """Before anything is read: not inside the data, and no file of another program's is replaced."""
    refuse_inputs(output_dir, "--output-dir", [*(data_dirs or []), *weights], nested=False)
    check_output_folder(output_dir, "--output-dir", [RECORD, PREDICTIONS_FILE, *FIGURES], "covid-ddp-evaluate",
                        either(record_of(RECORD, "weights", "split", "metrics"), is_own_figure))


def write_figures(output_dir: Path, p_covid, targets, metrics: dict, sidecar: dict | None = None) -> None:
    figures.save_figure(figures.roc_figure(p_covid, targets, metrics["roc_auc"]), output_dir / "roc.png")
    figures.save_figure(figures.pr_figure(p_covid, targets, metrics["average_precision"]), output_dir / "pr.png")
    figures.save_figure(figures.confusion_figure(metrics["confusion_matrix"], metrics["threshold"]),
                        output_dir / "confusion.png")
    temperature = (sidecar or {}).get("temperature")
    before = (scaled(p_covid, 1 / temperature), f"before temperature scaling (T = {temperature:.2f})") \
        if isinstance(temperature, (int, float)) and temperature > 0 else None
    figures.save_figure(figures.calibration_figure(p_covid, targets, before=before), output_dir / "calibration.png")
