"""covid-ddp-evaluate: score trained weights on a data directory, the way a reader of a paper would want.

    covid-ddp-evaluate --weights runs/demo/COVID_binary_classifier.pth --data-dir DATA [--split test|val|all]

Writes ``evaluation.json`` (every metric with its 95% bootstrap interval, the threshold and
where it came from, the rows scored) and ``roc.png``, ``pr.png``, ``confusion.png``,
``calibration.png`` into ``--output-dir`` (default: ``evaluation-<split>`` beside the
weights), and prints a compact table: with images of several sources (meta.npz ``dataset``,
or each --data-dir folder's name), one row per source too. ``test`` and ``val`` are the
weights' own run's parts, rebuilt from its ``config.json`` (and checked against its
``splits.npz``), so a held-out image stays held out; ``all`` scores every image, for a data
set the run never saw. Runs on one device. Not for clinical use.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import figures, launcher_watch
from .bounds import BOOTSTRAP, PROBABILITY
from .cli import ArgumentParser, HelpFormatter, run_cli
from .config import TrainConfig
from .data import MCFAM_BASE_URL, as_folders, load_data_dirs, load_dataset, patient_ids, source_names, to_binary
from .destinations import check_output_folder, either, is_own_figure, record_of, refuse_inputs
from .errors import UserError, first_line
from .files import write_json
from .metrics import METRICS, SOURCE_METRICS, binary_metrics, per_source
from .ensemble import Ensemble, common_split, ensemble_threshold
from .model_card import refresh_model_card
from .predict import WEIGHTS_HELP, decision_threshold, model_spec, resolve_device
from .splits import make_split

FIGURES = ("roc.png", "pr.png", "confusion.png", "calibration.png")
RECORD = "evaluation.json"
SPLITS = ("test", "val", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="covid-ddp-evaluate", formatter_class=HelpFormatter,
                            description="Score trained weights on a data folder on one device: every "
                            "metric with a 95% bootstrap interval, and the figures. Not for clinical use.")
    parser.add_argument("--weights", required=True, action="append", metavar="PTH", help=WEIGHTS_HELP + "; --split "
                        "test|val needs its run folder. Repeated: the ensemble of those runs (the mean of their "
                        "P(COVID)), runs of one split, e.g. one recipe over seeds")
    parser.add_argument("--data-dir", metavar="DIR", nargs="+", help="folder(s) with train_images64.npz and "
                        "train_labels.npz (and meta.npz for patient-level or source splits), several read as one set "
                        "(default: the data the weights' run trained on)")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="which images: the run's test or validation part, or all of them")
    parser.add_argument("--output-dir", metavar="DIR", help="where evaluation.json and the figures go "
                        "(default: evaluation-<split> beside the weights; for an ensemble, ensemble-evaluation-<split> "
                        "beside the first run's folder)")
    parser.add_argument("--threshold", type=PROBABILITY.parse, metavar="P",
                        help="decision threshold (default: the one chosen on "
                        "the validation split, from the weights' sidecar JSON; else 0.5)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP.parse, default=1000, metavar="N",
                        help=f"bootstrap resamples for the 95%% intervals ({BOOTSTRAP.describe()})")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    return parser


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


def evaluate(weights: str | Path | list, data_dir: str | list | None = None, split: str = "test",
             output_dir: str | Path | None = None, threshold: float | None = None, bootstrap: int = 1000,
             device: str = "auto") -> EvaluationResult:
    """Score ``weights`` (several: their ensemble) on ``split`` of ``data_dir`` (default: the data
    their run trained on) and write ``evaluation.json`` and the figures into ``output_dir``
    (default: ``evaluation-<split>`` beside the weights). ``test`` and ``val`` are the run's own
    parts, rebuilt from its config.json; ``all`` is every image."""
    weights = [Path(path) for path in (weights if isinstance(weights, (list, tuple)) else [weights])]
    data_dirs = [str(folder) for folder in ([data_dir] if isinstance(data_dir, (str, Path)) else data_dir)] \
        if data_dir is not None else None
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    BOOTSTRAP.check(bootstrap, "bootstrap")  # (a threshold is checked where it is used: decision_threshold)
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
        threshold, threshold_source = ensemble_threshold(ensemble, data if data_dirs is None else None, common)
    p_covid = ensemble.predict(data.images[rows])
    targets = to_binary(data.labels)[rows]
    metrics = binary_metrics(p_covid, targets, log_loss(p_covid, targets), threshold, bootstrap,
                             groups=patient_ids(data.meta, rows))
    by_source = per_source(p_covid, targets, source_names(data.meta, rows), threshold)
    write_json(output / RECORD, {
        "weights": str(weights[0]) if len(weights) == 1 else [str(path) for path in weights],
        "data": data.provenance, "split": split, "threshold_source": threshold_source,
        "metrics": metrics, **({"per_source": by_source} if by_source else {}), "rows": rows.tolist()})
    write_figures(output, p_covid, targets, metrics)
    if len(weights) == 1:  # an ensemble's results belong to no one run's card
        refresh_model_card(weights[0].parent, "covid-ddp-evaluate")
    return EvaluationResult(output, split, threshold, threshold_source, metrics, by_source or None, rows)


def run(arguments: argparse.Namespace) -> EvaluationResult:
    result = evaluate(arguments.weights, arguments.data_dir, arguments.split, arguments.output_dir,
                      arguments.threshold, arguments.bootstrap, arguments.device)
    members = "" if len(arguments.weights) == 1 else f"ensemble of {len(arguments.weights)} runs, "
    print(format_table(result.metrics, title=f"{result.split}: {len(result.rows)} images, {members}threshold "
                                             f"{result.threshold:.3f} ({result.threshold_source})"))
    if result.per_source:
        print(format_sources(result.per_source, result.threshold))
    print(f"wrote {result.folder / RECORD} and {', '.join(FIGURES)}")
    return result


def evaluation_folder(split: str, weights: list[Path]) -> Path:
    """A run's evaluation in its folder, an ensemble's beside the runs' folders."""
    if len(weights) == 1:
        return weights[0].parent / f"evaluation-{split}"
    return weights[0].parent.parent / f"ensemble-evaluation-{split}"


def check_destination(output_dir: Path, data_dirs: list[str] | None, weights: list[Path]) -> None:
    """Before anything is read: not inside the data, and no file of another program's is replaced."""
    refuse_inputs(output_dir, "--output-dir", [*(data_dirs or []), *weights], nested=False)
    check_output_folder(output_dir, "--output-dir", [RECORD, *FIGURES], "covid-ddp-evaluate",
                        either(record_of(RECORD, "weights", "split", "metrics"), is_own_figure))


def load_evaluation_data(data_dir: list[str] | None, weights: Path):
    """``--data-dir``, or else the set the weights' run trained on (regenerated when synthetic); its
    images of the size the weights read."""
    image_size = model_spec(weights).image_size
    if data_dir is not None:
        return load_data_dirs(as_folders(data_dir), image_size)
    recorded = _run_config(weights, "without --data-dir")
    config, provenance = _train_config(recorded, weights.parent / ckpt.CONFIG_FILE), recorded.get("data", {})
    if config.dataset == "synthetic":
        return load_dataset("synthetic", None, config.synthetic_size, config.seed, MCFAM_BASE_URL,
                            image_size=image_size)
    folders = provenance.get("data_dirs") or ([provenance["data_dir"]] if provenance.get("data_dir") else None)
    if not isinstance(provenance, dict) or not folders or not all(isinstance(f, str) for f in folders):
        raise UserError(f"{weights.parent / ckpt.CONFIG_FILE} records no data folder; pass --data-dir")
    return load_data_dirs(as_folders(folders), image_size)


def _run_config(weights: Path, purpose: str) -> dict:
    """The config.json of the run folder ``weights`` sits in; a missing or damaged one is a user error."""
    config_path = weights.parent / ckpt.CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{purpose} the run's {ckpt.CONFIG_FILE} must sit beside {weights.name}; for weights "
                        "without their run folder pass --data-dir and use --split all")
    try:
        recorded = json.loads(config_path.read_text())
        recorded["config"]["dataset"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{config_path}: not a covid_ddp run configuration ({error}); pass --data-dir and use "
                        "--split all")
    return recorded


def _train_config(recorded: dict, config_path: Path) -> TrainConfig:
    """The run's TrainConfig from its config.json, checked as a command line is: a hand edit that
    no command line could have made ("val_size": "a", "seed": null) is one line naming the file."""
    fields = {k: v for k, v in recorded["config"].items() if k in TrainConfig.__dataclass_fields__}
    try:
        config = TrainConfig(**fields)
        config.validate()
        if not isinstance(config.seed, int):  # (None passes the bounds: an unset option)
            raise UserError(f"--seed must be an integer, got {config.seed!r}")
    except (UserError, TypeError, ValueError, AttributeError) as error:  # a value of another type
        raise UserError(f"{config_path}: not as covid-ddp-train wrote it ({first_line(error)}); restore the run's "
                        "file, or pass --data-dir and use --split all") from None
    return config


def rows_to_score(split: str, weights: Path, data) -> np.ndarray:
    """All rows, or the run's own test/validation rows, rebuilt from its config.json."""
    if split == "all":
        return np.arange(len(data.images))
    run_dir, config_path = weights.parent, weights.parent / ckpt.CONFIG_FILE
    recorded = _run_config(weights, f"to rebuild --split {split},")
    config = _train_config(recorded, config_path)
    _check_same_data(recorded.get("data", {}).get("files", {}), data, config_path)
    rebuilt = make_split(to_binary(data.labels), config.split_plan(), data.meta)
    saved_path = run_dir / ckpt.SPLITS_FILE
    if saved_path.is_file():
        saved = ckpt.read_splits(saved_path)
        if not all(np.array_equal(saved.get(part), rows) for part, rows in rebuilt.as_arrays().items()):
            raise UserError(f"{saved_path} does not match the split rebuilt from {config_path}; the data "
                            "or covid_ddp's split code changed since the run")
    rows = rebuilt.test if split == "test" else rebuilt.val
    if not len(rows):
        raise UserError(f"the run has no {split} part (--val-size 0?); choose another --split")
    return rows


def _check_same_data(recorded_files: dict, data, config_path: Path) -> None:
    found_files = data.provenance.get("files", {})  # (none: the synthetic set, regenerated from the config)
    # Other folders, more or fewer, or the same in another order (rows follow the folder order).
    if recorded_files and list(recorded_files) != list(found_files):
        raise UserError(f"the run trained on {_folders(recorded_files)} ({config_path}), not {_folders(found_files)}: "
                        "its split would pick other images; pass the run's --data-dir folders in its order, or "
                        "use --split all")
    for name, recorded in recorded_files.items():
        found = found_files.get(name, {}).get("sha256")
        if found is not None and recorded.get("sha256") not in (None, found):
            raise UserError(f"{name} is not the file the run trained on ({config_path} records sha256 "
                            f"{recorded['sha256'][:12]}..., this one is {found[:12]}...): its split would "
                            "pick other images; use --split all")


def _folders(files: dict) -> str:
    """'folders a, b' from the recorded file keys ('<folder>/<file>'), or 'one folder'."""
    names = list(dict.fromkeys(name.split("/")[0] for name in files if "/" in name))
    return f"the folders {', '.join(names)}" if names else "one folder"


def format_sources(by_source: dict, threshold: float) -> str:
    """One source a line; n/a where the source lacks the class a metric needs."""
    width = max(len("source"), *map(len, by_source)) + 2
    lines = [f"per source, threshold {threshold:.3f} (n/a: the source lacks the class the metric needs)",
             f"{'source':<{width}}{'n (COVID / non-COVID)':<24}" + "".join(f"{name:>13}" for name in SOURCE_METRICS)]
    for source, row in by_source.items():
        counts = f"{row['n']} ({row['n_per_class']['covid']} / {row['n_per_class']['non_covid']})"
        cells = ["n/a" if row[name] is None else f"{row[name]:.3f}" for name in SOURCE_METRICS]
        lines.append(f"{source:<{width}}{counts:<24}" + "".join(f"{cell:>13}" for cell in cells))
    return "\n".join(lines)


def log_loss(p_covid: np.ndarray, targets: np.ndarray) -> float:
    p_true = np.where(targets == 1, p_covid, 1 - p_covid)
    return float(-np.log(np.clip(p_true, 1e-12, 1)).mean()) if len(targets) else float("nan")


def write_figures(output_dir: Path, p_covid, targets, metrics: dict) -> None:
    figures.save_figure(figures.roc_figure(p_covid, targets, metrics["roc_auc"]), output_dir / "roc.png")
    figures.save_figure(figures.pr_figure(p_covid, targets, metrics["average_precision"]), output_dir / "pr.png")
    figures.save_figure(figures.confusion_figure(metrics["confusion_matrix"], metrics["threshold"]),
                        output_dir / "confusion.png")
    figures.save_figure(figures.calibration_figure(p_covid, targets), output_dir / "calibration.png")


def format_table(metrics: dict, title: str) -> str:
    """One metric a line: value and 95% interval (n/a where undefined for these images)."""
    intervals, resampled = metrics.get("ci95", {}), metrics.get("bootstrap")
    over = f" (bootstrap over {resampled['units']} {resampled['unit']}s)" if resampled else ""
    lines = [title, f"{'metric':<20}{'value':>8}   95% CI{over}"]
    for name in METRICS:
        value, interval = metrics[name], intervals.get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        span = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        lines.append(f"{name:<20}{shown:>8}   {span}")
    counts = metrics["n_per_class"]
    lines.append(f"n = {metrics['n']} ({counts['covid']} COVID, {counts['non_covid']} non-COVID); "
                 f"confusion [[TN, FP], [FN, TP]] = {metrics['confusion_matrix']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    launcher_watch.arm("covid-ddp-evaluate")
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-evaluate")
