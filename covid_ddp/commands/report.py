"""covid-ddp-report: a recipe across sources, leave-one-source-out over seeds (``evaluation.report``).

    covid-ddp-report --data-dir data/real-cxr data/adult-cxr \
        --patient-split-without kermany --output-dir runs/report
    covid-ddp-report --data-dir DIR --variant "marks=--augment-marks" --output-dir runs/report
"""

from __future__ import annotations

import argparse

import numpy as np

from ..cli import ArgumentParser, HelpFormatter, run_cli, say
from ..data.confounding import table_of
from ..data.folders import as_folders, load_data_dirs
from ..data.format import to_binary
from ..errors import UserError
from ..evaluation import report
from ..evaluation.model_card import REPORTED_FILE, refresh_model_card
from ..files import atomic_path, write_json


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
    parser.add_argument("--launcher", metavar="COMMAND", help="what runs covid_ddp.train, e.g. 'torchrun "
                        "--nproc_per_node 2' (default: this Python, one process)")
    parser.add_argument("--ensemble", action="store_true", help="also score the seeds' models of every setting and "
                        "recipe as one ensemble (the mean of their P(COVID)): one more row each")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then covid-ddp-train flags for every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run_report(build_parser().parse_args(argv)), prog="covid-ddp-report")


if __name__ == "__main__":  # python -m covid_ddp.commands.report
    raise SystemExit(main())


def run_report(arguments: argparse.Namespace) -> list[dict]:
    """covid-ddp-report with its parsed flags: every setting's runs, the table and the cards."""
    seeds = report.parse_seeds(arguments.seeds)
    folders = as_folders(arguments.data_dir)
    launcher, output = report.check_before_reading(arguments, folders)
    shared = arguments.train_flags[1:] if arguments.train_flags[:1] == ["--"] else arguments.train_flags
    recipes = {"default": [], **dict(report.parse_variant(spec) for spec in arguments.variant)}
    report.check_train_flags(folders, shared, recipes, output)
    data = load_data_dirs(folders)
    if data.meta is None or "dataset" not in data.meta:
        raise UserError(f"{folders[0]}: no meta.npz with a 'dataset' array: one source cannot be held out; give "
                        "several folders or a folder made by covid-ddp-prepare")
    without = tuple(filter(None, (arguments.patient_split_without or "").split(",")))
    unknown = set(without) - set(np.asarray(data.meta["dataset"]).astype(str))
    if unknown:
        raise UserError(f"--patient-split-without: no source named {', '.join(sorted(unknown))} in the data")
    if arguments.ensemble and len(seeds) < 2:
        raise UserError(f"--ensemble averages the seeds' models: give --seeds two or more, got '{arguments.seeds}'")
    every = report.settings(data.meta, to_binary(data.labels), without)
    header = {"seeds": seeds, "data_dir": [str(f) for f in folders], "train_flags": shared}
    # --only adds to (or redoes rows of) an earlier report of the same data, seeds and flags.
    rows = report.earlier_rows(output, header) if arguments.only else []
    # New recipes last; each recipe's ensemble row right after it.
    recipe_order = list(dict.fromkeys(["default", *(row["recipe"].removesuffix(" ensemble") for row in rows), *recipes]))
    recipe_order = [name for recipe in recipe_order for name in (recipe, f"{recipe} ensemble")]
    for setting, split_flags in report.chosen_settings(every, arguments.only).items():
        for recipe, recipe_flags in recipes.items():
            runs, folders_of = {}, {}
            for seed in seeds:
                flags = ["--data-dir", *map(str, folders), *split_flags, *shared, *recipe_flags, "--seed", str(seed)]
                folders_of[seed] = output / report.slug(setting) / recipe / f"seed_{seed}"
                runs[seed] = report.train_once(launcher, flags, folders_of[seed])
            row = {"setting": setting, "recipe": recipe, "flags": split_flags + recipe_flags,
                   "runs": runs, "summary": report.summarise(list(runs.values()))}
            new_rows = [row]
            if arguments.ensemble:
                members = [folders_of[seed] for seed in seeds]
                new_rows.append(report.ensemble_row(row, members, data, report.bootstrap_of(shared)))
            replaced = {(r["setting"], r["recipe"]) for r in new_rows}
            rows = report.in_report_order([r for r in rows if (r["setting"], r["recipe"]) not in replaced] + new_rows,
                                    list(every), recipe_order)
            for shown in new_rows:
                say(f"covid-ddp-report: {setting} / {shown['recipe']}: " + ", ".join(
                    f"{name} {report.format_cell(shown['summary'][name])}" for name in report.SHOWN))
            write_json(output / "report.json", {**header, "rows": rows})
            for seed, run_dir in folders_of.items():  # each run's card says where it was reported
                write_json(run_dir / REPORTED_FILE, {"report": str(output / "report.md"), "setting": setting,
                                                     "recipe": recipe, "seed": seed, "seeds": seeds,
                                                     "ensemble": arguments.ensemble})
                refresh_model_card(run_dir, "covid-ddp-report", quiet=True)
    sources = table_of(data.meta, to_binary(data.labels), np.arange(len(data.labels)))
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(report.markdown(rows, seeds, sources))
    print(report.markdown(rows, seeds, sources), end="")
    return rows
