"""How a recipe generalizes across sources: leave-one-source-out over several seeds, in one table
(``run_report``, what covid-ddp-report runs).

A random split of images from several hospitals mostly measures how well a model tells the
hospitals apart, when each holds mostly one class. This trains the recipe (``covid-ddp-train``
with the flags after ``--``) once per seed on every setting and collects the test metrics:

- ``patient-level``: ``--group-split`` over every source (the optimistic figure);
- ``patient-level without X``: the same with sources X left out (``--patient-split-without``;
  for the shared sets, ``kermany``: its non-COVID images are all children's);
- ``held out: S``, for every source S whose absence still leaves both classes to train on: train
  and validate on the other sources, test on all of S. A source holding both classes gets a
  ROC AUC; one holding a single class can only be scored by its sensitivity or specificity.

Writes ``report.json`` (every run's test metrics) and ``report.md``: per setting and recipe the
mean ± std over the seeds and, in brackets, the widest 95% bootstrap interval of any one seed's
run (the spread of one test set). Nothing is chosen on these test sets. Not for clinical use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import say
from ..data.confounding import confounding_warning, markdown_table, table_of
from ..data.folders import as_folders, load_data_dirs
from ..data.format import to_binary
from ..data.splits import patient_ids
from ..destinations import check_can_make, refuse_inputs
from ..errors import UserError
from ..files import atomic_path, write_json
from ..metrics import binary_metrics
from ..run_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from ..subgroups import SUBGROUP_METRICS
from ..training.config import TrainConfig, parse_config
from .ensemble import Ensemble, common_split, ensemble_threshold
from .model_card import REPORTED_FILE, refresh_model_card
from .run_data import bootstrap_seed

SHOWN = ("roc_auc", "sensitivity", "specificity", "threshold")  # the calls are made at each run's own threshold
TRAIN_MODULE = ["-m", "covid_ddp.commands.train"]
TIMING_FILE = "report_timing.json"  # a run's wall-clock seconds, kept for a report that reuses it


def settings(meta: dict, targets: np.ndarray, without: tuple[str, ...]) -> dict[str, list[str]]:
    """Setting name -> the split flags that make it, for this data."""
    chosen = {"patient-level": ["--group-split"]}
    if without:
        chosen[f"patient-level without {', '.join(without)}"] = ["--group-split", "--exclude-source", ",".join(without)]
    sources = np.asarray(meta["dataset"]).astype(str)
    for source in sorted(set(sources)):
        rest = targets[sources != source]
        if (np.bincount(rest, minlength=2) >= 2).all():  # both classes left to train on
            chosen[f"held out: {source}"] = ["--group-split", "--holdout-source", source]
    return chosen


def train_once(launcher: list[str], flags: list[str], run_dir: Path) -> dict:
    """One run's test metrics, with the wall-clock ``seconds`` it took (its console in ``train.log``
    beside it); a finished run is reused (``--resume auto``), so a report stopped half-way continues
    where it was. A run refused in one line, having written nothing, leaves no folder or log behind."""
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics, timing, log = run_dir / METRICS_FILE, run_dir / TIMING_FILE, run_dir.parent / f"{run_dir.name}.log"
    finished_before = metrics.is_file()
    command = [*launcher, *flags, "--output-dir", str(run_dir), "--resume", "auto"]
    started = time.monotonic()
    with open(log, "w") as console:
        done = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not metrics.is_file():
        lines = log.read_text().splitlines()
        refusal = next((line.strip() for line in reversed(lines) if "error:" in line), None)
        if refusal and not any(run_dir.iterdir()):
            log.unlink()
            for folder in made:
                with contextlib.suppress(OSError):  # (not empty: something else is there now)
                    folder.rmdir()
            raise UserError(f"a training run was refused: {refusal}")
        cause = refusal or (lines[-1].strip() if lines else "no output")
        raise UserError(f"a training run failed: {cause} (the whole console: {log})")
    if not finished_before:  # (a run resumed half-way counts only its second part)
        write_json(timing, {"seconds": round(time.monotonic() - started, 1)})
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
    # The command the run was really trained with (config.json's), which a reused run was checked against.
    trained_with = json.loads((run_dir / CONFIG_FILE).read_text()).get("command")
    return {**json.loads(metrics.read_text())["test"], "seconds": seconds, "trained_with": trained_with}


def summarise(runs: list[dict]) -> dict:
    """Per shown metric: mean, std over seeds, the widest bootstrap interval of one seed (None: undefined)."""
    summary = {"n": runs[0]["n"], "n_per_class": runs[0]["n_per_class"]}
    seconds = [run.get("seconds") for run in runs]
    summary["seconds"] = float(np.mean(seconds)) if None not in seconds else None
    return {**summary, **summarise_metrics(runs, SHOWN)}


def summarise_subgroups(runs: list[dict]) -> dict:
    """The seeds' subgroup rows (metrics.json's test ``subgroups``), as ``summarise`` does the whole
    test set's: per column and value, n and the mean, std and widest interval of each metric; a
    value too small in any seed's split is marked so."""
    tables = [run.get("subgroups") or {} for run in runs]
    summary = {}
    for column in tables[0]:
        for value, first in tables[0][column].items():
            seeds = [table.get(column, {}).get(value) for table in tables]
            if None in seeds:  # (not in every seed's test split: a held-out source splits alike, so rare)
                continue
            summary.setdefault(column, {})[value] = {
                "n": first["n"], "n_per_class": first["n_per_class"], "too_few": any(row["too_few"] for row in seeds),
                **summarise_metrics(seeds, SUBGROUP_METRICS)}
    return summary


def summarise_metrics(runs: list[dict], names: tuple[str, ...]) -> dict:
    """Per metric of ``names``: mean, std over ``runs``, the widest interval of one (None: undefined in one)."""
    summary = {}
    for name in names:
        values = [run[name] for run in runs if run.get(name) is not None]
        if len(values) < len(runs):
            summary[name] = None
            continue
        intervals = [run["ci95"].get(name) for run in runs if (run.get("ci95") or {}).get(name)]
        widest = max(intervals, key=lambda i: i[1] - i[0]) if intervals else None
        summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                         "interval": widest}
    return summary


def subgroup_lines(rows: list[dict]) -> list[str]:
    """A row per (setting, recipe, column = value), where the data's meta.npz has such columns."""
    lines = []
    for row in rows:
        for column, values in (row.get("subgroups") or {}).items():
            for value, stats in values.items():
                counts = stats["n_per_class"]
                cells = (["too few images to say anything", "", ""] if stats["too_few"]
                         else [format_cell(stats[name]) for name in SUBGROUP_METRICS])
                lines.append(f"| {row['setting']} | {row['recipe']} | {column} = {value} | {stats['n']} "
                             f"({counts['covid']} / {counts['non_covid']}) | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["", "Per subgroup of the test split (meta.npz columns of few values, as covid-ddp-evaluate gives them; "
            "at each run's threshold; mean ± std over the seeds [the widest interval of one seed]):", "",
            "| setting | recipe | subgroup | test n (COVID / non-COVID) | ROC AUC | sensitivity | specificity |",
            "| --- | --- | --- | --- | --- | --- | --- |", *lines]


def markdown(rows: list[dict], seeds: list[int], sources: dict | None = None) -> str:
    units = sorted({run.get("bootstrap", {}).get("unit", "image") for row in rows if not row.get("ensemble")
                    for run in row["runs"].values()})
    lines = []
    if sources:
        lines += ["Images (patients) per source and class of the data:", "", markdown_table(sources), ""]
        warning = confounding_warning(sources)
        if warning:
            lines += [f"**Confounded:** {warning}. Read the held-out rows: they are the ones a source cannot explain.",
                      ""]
    lines += [f"Mean ± std over seeds {', '.join(map(str, seeds))}; [the widest 95% bootstrap interval of one seed's "
              f"test set, resampling {' and '.join(units) or 'image'}s]. An 'ensemble' row scores the mean P(COVID) of "
              "the seeds' models as one model, at a threshold chosen on their common validation split, with its own "
              "interval. n/a: the held-out source has one class only. Sensitivity and specificity call COVID at "
              "each run's threshold (chosen on its validation split). Minutes: the mean wall-clock time of one "
              "run (training, test, audit), on the machine the report ran on.", "",
              "| setting | recipe | test n (COVID / non-COVID) | ROC AUC | sensitivity | specificity | threshold | minutes |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        counts = row["summary"]["n_per_class"]
        cells = [format_cell(row["summary"][name]) for name in SHOWN]
        seconds = row["summary"].get("seconds")
        minutes = "" if row.get("ensemble") else ("?" if seconds is None else f"{seconds / 60:.1f}")
        lines.append(f"| {row['setting']} | {row['recipe']} | {row['summary']['n']} ({counts['covid']} / "
                     f"{counts['non_covid']}) | " + " | ".join(cells) + f" | {minutes} |")
    lines += subgroup_lines(rows)
    return "\n".join(lines) + "\n"


def format_cell(stats: dict | None) -> str:
    if stats is None:
        return "n/a"
    interval = stats["interval"]
    shown = f"{stats['mean']:.3f}" + ("" if stats["std"] is None else f" ± {stats['std']:.3f}")
    return shown + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def ensemble_row(row: dict, run_dirs: list[Path], data, bootstrap: int) -> dict:
    """The seeds' models as one (the mean of their P(COVID)) on the setting's test split: its
    threshold chosen on their common validation split, its own bootstrap interval."""
    weights = [run_dir / WEIGHTS_FILE for run_dir in run_dirs]
    ensemble = Ensemble.load(weights)
    split = common_split(weights)
    threshold, _ = ensemble_threshold(ensemble, lambda: data, split)
    test_rows = split["test"]
    targets = to_binary(data.labels)[test_rows]
    scored = binary_metrics(ensemble.predict(data.images, rows=test_rows), targets, threshold=threshold,
                            bootstrap=bootstrap, seed=bootstrap_seed(weights[0]), groups=patient_ids(data.meta, test_rows))
    summary = {"n": scored["n"], "n_per_class": scored["n_per_class"]}
    for name in SHOWN:
        summary[name] = None if scored[name] is None else {
            "mean": scored[name], "std": None, "interval": scored.get("ci95", {}).get(name)}
    return {"setting": row["setting"], "recipe": f"{row['recipe']} ensemble", "flags": row["flags"], "ensemble": True,
            "runs": {}, "metrics": scored, "summary": summary}


def check_before_reading(arguments: argparse.Namespace, folders: list) -> tuple[list[str], Path]:
    """(the command that trains, the report's folder), checked before anything is read or trained:
    a launcher that is not there, or a folder that cannot be made, would fail after the first run."""
    launcher = [*(shlex.split(arguments.launcher) if arguments.launcher else [sys.executable]), *TRAIN_MODULE]
    if shutil.which(launcher[0]) is None:
        raise UserError(f"--launcher '{arguments.launcher}': no command '{launcher[0]}' on this machine's PATH")
    output = Path(arguments.output_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output-dir {output} is a file; give a folder")
    check_can_make(output, "--output-dir")
    refuse_inputs(output, "--output-dir", folders, nested=False)
    return launcher, output


def check_train_flags(folders: list, shared: list[str], recipes: dict[str, list[str]], output: Path) -> None:
    """Every recipe's covid-ddp-train flags parse and hold, before anything is trained: a typo
    must not cost the runs before the one it breaks."""
    for recipe, recipe_flags in recipes.items():
        flags = [*shared, *recipe_flags]
        try:
            parse_config(["--data-dir", *map(str, folders), "--group-split", *flags, "--output-dir",
                          str(output / "check")])
        except UserError as error:
            raise UserError(f"the training flags of recipe '{recipe}' ({shlex.join(flags)}): {error}") from None


def earlier_rows(output: Path, header: dict) -> list[dict]:
    """The rows of ``output``'s report.json if it was made from the same data, seeds and flags."""
    try:
        earlier = json.loads((output / "report.json").read_text())
    except (OSError, ValueError):
        return []
    same = isinstance(earlier, dict) and all(earlier.get(key) == value for key, value in header.items())
    return list(earlier.get("rows", [])) if same else []


def in_report_order(rows: list[dict], setting_order: list[str], recipe_order: list[str]) -> list[dict]:
    """Settings in the order ``settings`` makes them, and recipes in ``recipe_order`` within each."""

    def position(row):
        setting = row["setting"]
        return (setting_order.index(setting) if setting in setting_order else len(setting_order),
                recipe_order.index(row["recipe"]))

    return sorted(rows, key=position)


def chosen_settings(every: dict[str, list[str]], only: str | None) -> dict[str, list[str]]:
    """The settings --only names (by folder name), in the report's order."""
    if only is None:
        return every
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {slug(setting) for setting in every}
    if unknown or not wanted:
        raise UserError(f"--only: no setting named {', '.join(sorted(unknown)) or repr(only)}; this data has "
                        + ", ".join(slug(setting) for setting in every))
    return {setting: flags for setting, flags in every.items() if slug(setting) in wanted}


def bootstrap_of(train_flags: list[str]) -> int:
    """The resamples the runs use (--bootstrap among the flags after --), for the ensemble rows."""
    values = [flag.split("=", 1)[1] for flag in train_flags if flag.startswith("--bootstrap=")]
    values += [train_flags[i + 1] for i, flag in enumerate(train_flags[:-1]) if flag == "--bootstrap"]
    return int(values[-1]) if values else TrainConfig.bootstrap


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated whole numbers, got '{text}'")
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds takes one or more seeds of 0 or more, got '{text}'")
    return seeds


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, equals, flags = spec.partition("=")
    name = name.strip()
    if not equals or not name or name == "default" or slug(name) != name:
        raise UserError(f"--variant '{spec}' is not NAME=FLAGS with a new name of letters, digits and dashes")
    return name, shlex.split(flags)


def slug(setting: str) -> str:
    """A setting's folder name: 'held out: ieee8023' -> 'held-out-ieee8023'."""
    return re.sub(r"[^0-9A-Za-z]+", "-", setting).strip("-")


def run_report(arguments: argparse.Namespace) -> list[dict]:
    """covid-ddp-report with its parsed flags: every setting's runs, the table and the cards."""
    seeds = parse_seeds(arguments.seeds)
    folders = as_folders(arguments.data_dir)
    launcher, output = check_before_reading(arguments, folders)
    shared = arguments.train_flags[1:] if arguments.train_flags[:1] == ["--"] else arguments.train_flags
    recipes = {"default": [], **dict(parse_variant(spec) for spec in arguments.variant)}
    check_train_flags(folders, shared, recipes, output)
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
    every = settings(data.meta, to_binary(data.labels), without)
    header = {"seeds": seeds, "data_dir": [str(f) for f in folders], "train_flags": shared}
    # --only adds to (or redoes rows of) an earlier report of the same data, seeds and flags.
    rows = earlier_rows(output, header) if arguments.only else []
    # New recipes last; each recipe's ensemble row right after it.
    recipe_order = list(dict.fromkeys(["default", *(row["recipe"].removesuffix(" ensemble") for row in rows), *recipes]))
    recipe_order = [name for recipe in recipe_order for name in (recipe, f"{recipe} ensemble")]
    for setting, split_flags in chosen_settings(every, arguments.only).items():
        for recipe, recipe_flags in recipes.items():
            runs, folders_of = {}, {}
            for seed in seeds:
                flags = ["--data-dir", *map(str, folders), *split_flags, *shared, *recipe_flags, "--seed", str(seed)]
                folders_of[seed] = output / slug(setting) / recipe / f"seed_{seed}"
                runs[seed] = train_once(launcher, flags, folders_of[seed])
            row = {"setting": setting, "recipe": recipe, "flags": split_flags + recipe_flags,
                   "runs": runs, "summary": summarise(list(runs.values())),
                   "subgroups": summarise_subgroups(list(runs.values()))}
            new_rows = [row]
            if arguments.ensemble:
                members = [folders_of[seed] for seed in seeds]
                new_rows.append(ensemble_row(row, members, data, bootstrap_of(shared)))
            replaced = {(r["setting"], r["recipe"]) for r in new_rows}
            rows = in_report_order([r for r in rows if (r["setting"], r["recipe"]) not in replaced] + new_rows,
                                    list(every), recipe_order)
            for shown in new_rows:
                say(f"covid-ddp-report: {setting} / {shown['recipe']}: " + ", ".join(
                    f"{name} {format_cell(shown['summary'][name])}" for name in SHOWN))
            write_json(output / "report.json", {**header, "rows": rows})
            for seed, run_dir in folders_of.items():  # each run's card says where it was reported
                write_json(run_dir / REPORTED_FILE, {"report": str(output / "report.md"), "setting": setting,
                                                     "recipe": recipe, "seed": seed, "seeds": seeds,
                                                     "ensemble": arguments.ensemble})
                refresh_model_card(run_dir, "covid-ddp-report", quiet=True)
    sources = table_of(data.meta, to_binary(data.labels), np.arange(len(data.labels)))
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(markdown(rows, seeds, sources))
    print(markdown(rows, seeds, sources), end="")
    return rows
