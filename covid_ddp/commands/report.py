"""covid-ddp-report: a recipe across sources, leave-one-source-out over seeds (``evaluation.report``).

    covid-ddp-report --data-dir data/real-cxr data/adult-cxr \
        --patient-split-without kermany --output-dir runs/report
    covid-ddp-report --data-dir DIR --variant "marks=--augment-marks" --output-dir runs/report
"""

from __future__ import annotations

import argparse

from ..cli import ArgumentParser, HelpFormatter, run_cli
from ..evaluation.report import run_report


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="covid-ddp-report", formatter_class=HelpFormatter,
                            description="Leave-one-source-out and patient-level results of a recipe over "
                            "several seeds, as a markdown and JSON table. Not for clinical use.")
    parser.add_argument("--data-dir", nargs="+", required=True, metavar="DIR", help="the data folder(s), with meta.npz "
                        "'dataset' (a folder without one is a source of its own)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="report.md, report.json and every run")
    parser.add_argument("--seeds", default="1,2,3", metavar="S,...", help="seeds of every setting")
    parser.add_argument("--patient-split-without", metavar="SOURCES", help="also a patient-level split with these "
                        "sources left out (e.g. kermany: the children's images of real-cxr)")
    parser.add_argument("--only", metavar="SETTING,...", help="run only these settings, named as their folders "
                        "(e.g. held-out-ieee8023,patient-level-without-kermany), and add them to the report already "
                        "in --output-dir if it has the same data, seeds and flags; default: every setting")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="another recipe to compare with the default, e.g. 'marks=--augment-marks'")
    parser.add_argument("--launcher", metavar="COMMAND", help="what runs covid_ddp.commands.train, e.g. 'torchrun "
                        "--nproc_per_node 2' (default: this Python, one process)")
    parser.add_argument("--ensemble", action="store_true", help="also score the seeds' models of every setting and "
                        "recipe as one ensemble (the mean of their P(COVID)): one more row each")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then covid-ddp-train flags for every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run_report(build_parser().parse_args(argv)), prog="covid-ddp-report")


if __name__ == "__main__":  # python -m covid_ddp.commands.report
    raise SystemExit(main())


