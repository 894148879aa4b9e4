"""The shortcut audit of every seed's model of some recipes in a covid-ddp-report, side by side.

    python scripts/audit_table.py --report runs/report --setting patient-level --recipes default,marks

Audits each ``<report>/<setting>/<recipe>/seed_*`` run on its test split (``covid-ddp-audit``;
an existing ``audit-test/audit.json`` is reused) and prints a Markdown table: per measurement
and recipe, the mean ± std over the seeds. Not for clinical use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covid_ddp.commands.audit import build_parser, run
from covid_ddp.run_files import WEIGHTS_FILE

ROWS = (  # (label, how to read the number out of audit.json)
    ("marks on non-COVID images: mean change of P(COVID)", lambda a: a["marks"]["mean_change"]),
    ("marks: share of non-COVID calls turned COVID", lambda a: a["marks"]["flip_share"]),
    ("border hidden: change of ROC AUC", lambda a: a["border"]["roc_auc_change"]),
    ("border hidden: mean abs change of P(COVID)", lambda a: a["border"]["mean_abs_change"]),
    ("source probe, COVID images: ROC AUC", lambda a: a["source_probe"].get("COVID", {}).get("roc_auc")),
    ("source probe, non-COVID images: ROC AUC", lambda a: a["source_probe"].get("non-COVID", {}).get("roc_auc")),
    ("Grad-CAM heat inside the lung box (0.56: even)", lambda a: a["gradcam"]["inside_share"]),
)


def audits(folder: Path) -> list[dict]:
    found = []
    for run_dir in sorted(path for path in folder.glob("seed_*") if path.is_dir()):
        saved = run_dir / "audit-test" / "audit.json"
        if not saved.is_file():
            run(build_parser().parse_args(["--weights", str(run_dir / WEIGHTS_FILE)]))
        found.append(json.loads(saved.read_text()))
    return found


def cell(values: list, signed: bool) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return (f"{np.mean(values):+.3f}" if signed else f"{np.mean(values):.3f}") + spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a covid-ddp-report --output-dir")
    parser.add_argument("--setting", default="patient-level", help="the setting's folder name")
    parser.add_argument("--recipes", default="default", help="comma-separated recipe folder names")
    arguments = parser.parse_args()
    recipes = [name.strip() for name in arguments.recipes.split(",") if name.strip()]
    by_recipe = {name: audits(Path(arguments.report) / arguments.setting / name) for name in recipes}
    seeds = {name: len(found) for name, found in by_recipe.items()}
    print(f"Shortcut audit, {arguments.setting} test split, mean ± std over seeds ({seeds})\n")
    print("| measurement | " + " | ".join(recipes) + " |")
    print("| --- |" + " --- |" * len(recipes))
    for label, value in ROWS:
        signed = "change of" in label and "abs" not in label  # a change has a direction
        print(f"| {label} | " + " | ".join(cell([value(a) for a in by_recipe[name]], signed) for name in recipes) + " |")


if __name__ == "__main__":
    main()
