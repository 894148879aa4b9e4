"""covid-ddp-audit: how much a trained model's calls rest on shortcuts (``evaluation.audit``).

    covid-ddp-audit --weights runs/demo/COVID_binary_classifier.pth [--data-dir DIR ...] [--split test|val|all]

Writes audit.json, audit.md and audit.png to --output-dir (default: ``audit-<split>`` beside the
weights) and brings the run's model_card.md up to date. Not for clinical use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import launcher_watch
from ..bounds import PROBABILITY, SEED
from ..cli import WEIGHTS_HELP, ArgumentParser, HelpFormatter, run_cli
from ..destinations import check_output_folder, either, is_own_figure, record_of, refuse_inputs
from ..evaluation.audit import AUDIT_FILES, audit_rows, markdown
from ..evaluation.model_card import refresh_model_card
from ..evaluation.run_data import load_evaluation_data, rows_to_score
from ..models.inference import resolve_device
from ..models.loading import load_model
from ..models.weights import decision_threshold


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="covid-ddp-audit", formatter_class=HelpFormatter,
                            description="Measure how much a trained model leans on publication marks, the image "
                            "border and the source hospital, and where its Grad-CAM heat lies. Not for clinical use.")
    parser.add_argument("--weights", required=True, metavar="PTH", help=WEIGHTS_HELP + "; --split test|val needs "
                        "its run folder")
    parser.add_argument("--data-dir", metavar="DIR", nargs="+", help="folder(s) of the data, with meta.npz 'dataset' "
                        "for the source probe (default: the data the weights' run trained on)")
    parser.add_argument("--split", default="test", choices=["test", "val", "all"],
                        help="which images: the run's test or validation part, or all of them")
    parser.add_argument("--output-dir", metavar="DIR", help="where audit.json, audit.md and audit.png go "
                        "(default: audit-<split> beside the weights)")
    parser.add_argument("--threshold", type=PROBABILITY.parse, metavar="P",
                        help="decision threshold for the flips (default: the "
                        "run's, from the weights' sidecar JSON; else 0.5)")
    parser.add_argument("--seed", type=SEED.parse, default=0, metavar="N",
                        help="seed of the stamped marks and probe folds")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    return parser


def run(arguments: argparse.Namespace) -> dict:

    weights = Path(arguments.weights)
    model = load_model(weights, resolve_device(arguments.device))
    output_dir = Path(arguments.output_dir or weights.parent / f"audit-{arguments.split}")
    refuse_inputs(output_dir, "--output-dir", [*(arguments.data_dir or []), weights], nested=False)
    check_output_folder(output_dir, "--output-dir", AUDIT_FILES, "covid-ddp-audit",
                        either(record_of(AUDIT_FILES[0], "weights", "split", "threshold"), is_own_figure))
    data = load_evaluation_data(arguments.data_dir, weights)
    rows = rows_to_score(arguments.split, weights, data)
    result, about = audit_rows(model, weights, data, rows, arguments.split,
                               decision_threshold(arguments.threshold, weights), arguments.seed, output_dir)
    print(markdown({**about, **result}), end="")
    print(f"wrote {', '.join(str(output_dir / name) for name in AUDIT_FILES)}")
    refresh_model_card(weights.parent, "covid-ddp-audit")
    return result


def main(argv: list[str] | None = None) -> int:
    launcher_watch.arm("covid-ddp-audit")
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-audit")


if __name__ == "__main__":  # python -m covid_ddp.commands.audit
    raise SystemExit(main())
