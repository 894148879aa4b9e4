"""covid-ddp-evaluate: score trained weights on a data folder (``evaluation.evaluate``).

    covid-ddp-evaluate --weights runs/demo/COVID_binary_classifier.pth --data-dir DATA [--split test|val|all]

Writes evaluation.json and the figures into --output-dir (default: ``evaluation-<split>`` beside
the weights) and prints a compact table, one row per source too. Not for clinical use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import launcher_watch
from ..bounds import BOOTSTRAP, PROBABILITY, SEED
from ..cli import WEIGHTS_HELP, ArgumentParser, HelpFormatter, run_cli
from ..evaluation.evaluate import FIGURES, RECORD, SPLITS, EvaluationResult, evaluate
from ..evaluation.model_card import refresh_model_card
from ..metrics import METRICS, SOURCE_METRICS, wilson_replaced
from ..predictions import PREDICTIONS_FILE
from ..subgroups import SUBGROUP_METRICS


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
    parser.add_argument("--seed", type=SEED.parse, metavar="N",
                        help="seed of the bootstrap resamples (default: the run's --seed, so that the intervals are "
                        "training's own on the same images; an ensemble's first run's; 0 without a run folder)")
    parser.add_argument("--subgroups", metavar="COLUMNS",
                        help="comma-separated meta.npz columns to give rows per value of (sex, view, source, age in "
                        "bands, ...); default: every column of few values the data holds")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    return parser


def run(arguments: argparse.Namespace) -> EvaluationResult:
    result = evaluate(arguments.weights, arguments.data_dir, arguments.split, arguments.output_dir,
                      arguments.threshold, arguments.bootstrap, arguments.device, arguments.seed,
                      [name.strip() for name in arguments.subgroups.split(",") if name.strip()]
                      if arguments.subgroups else None)
    if len(arguments.weights) == 1:  # an ensemble's results belong to no one run's card
        refresh_model_card(Path(arguments.weights[0]).parent, "covid-ddp-evaluate")
    members = "" if len(arguments.weights) == 1 else f"ensemble of {len(arguments.weights)} runs, "
    print(format_table(result.metrics, title=f"{result.split}: {len(result.rows)} images, {members}threshold "
                                             f"{result.threshold:.3f} ({result.threshold_source})"))
    if result.per_source:
        print(format_sources(result.per_source, result.threshold))
    if result.subgroups:
        print(format_subgroups(result.subgroups, result.threshold))
    print(f"wrote {result.folder / RECORD}, {PREDICTIONS_FILE} (one row an image) and {', '.join(FIGURES)}")
    return result


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


def format_subgroups(table: dict, threshold: float) -> str:
    """A row per subgroup value: n, ROC AUC, sensitivity, specificity, each with its interval."""
    lines = [f"per subgroup, threshold {threshold:.3f} (95% intervals; n/a: the row lacks the class the metric needs)"]
    for column, values in table.items():
        for value, row in values.items():
            counts = f"{row['n']} ({row['n_per_class']['covid']} / {row['n_per_class']['non_covid']})"
            cells = [_with_interval(row[name], row["ci95"].get(name)) for name in SUBGROUP_METRICS]
            note = "  too few images to say anything" if row["too_few"] else ""
            lines.append(f"{column}={value:<12} n {counts:<16} " + "  ".join(
                f"{name} {cell}" for name, cell in zip(SUBGROUP_METRICS, cells)) + note)
    return "\n".join(lines)


def _with_interval(value, interval) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def format_table(metrics: dict, title: str) -> str:
    """One metric a line: value and 95% interval (n/a where undefined for these images)."""
    intervals, resampled = metrics.get("ci95", {}), metrics.get("bootstrap")
    over = f" (bootstrap over {resampled['units']} {resampled['unit']}s)" if resampled else ""
    lines = [title, f"{'metric':<20}{'value':>8}   95% CI{over}"]
    wilson = wilson_replaced(metrics)
    for name in METRICS:
        value, interval = metrics[name], intervals.get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        span = f"[{interval[0]:.3f}, {interval[1]:.3f}]" + (" *" if name in wilson else "") if interval else ""
        lines.append(f"{name:<20}{shown:>8}   {span}")
    if wilson:
        lines.append("* Wilson score interval: the bootstrap cannot move a value of 0 or 1 (ci95_method in the JSON)")
    counts = metrics["n_per_class"]
    lines.append(f"n = {metrics['n']} ({counts['covid']} COVID, {counts['non_covid']} non-COVID); "
                 f"confusion [[TN, FP], [FN, TP]] = {metrics['confusion_matrix']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    launcher_watch.arm("covid-ddp-evaluate")
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-evaluate")


if __name__ == "__main__":  # python -m covid_ddp.commands.evaluate
    raise SystemExit(main())
