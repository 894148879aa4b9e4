"""Bootstrap intervals resampling images against resampling patients, on the same runs' test scores.

    python scripts/interval_units.py --report runs/report --settings patient-level,patient-level-without-kermany

For every seed of the default recipe of those covid-ddp-report settings: the shipped weights
score the run's test split again, and the 95% intervals of ROC AUC, sensitivity and
specificity are drawn twice (1000 resamples, the run's seed): over images, as covid_ddp did
before 0.3, and over patients (meta.npz 'patient_id'), as the run's metrics.json now holds.
Prints a Markdown table with each interval's width and their ratio. Not for clinical use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covid_ddp.data.folders import as_folders, load_data_dirs
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import patient_ids
from covid_ddp.metrics import binary_metrics
from covid_ddp.models.inference import predict
from covid_ddp.models.loading import inference_model, load_model
from covid_ddp.models.weights import WEIGHTS_FILE, read_sidecar

SHOWN = ("roc_auc", "sensitivity", "specificity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a covid-ddp-report --output-dir")
    parser.add_argument("--settings", default="patient-level", help="comma-separated setting folder names")
    parser.add_argument("--recipe", default="default")
    arguments = parser.parse_args()
    report = Path(arguments.report)
    data = load_data_dirs(as_folders(json.loads((report / "report.json").read_text())["data_dir"]))
    targets = to_binary(data.labels)
    print("| setting | seed | test images / patients | metric | value | images: 95% interval (width) | "
          "patients: 95% interval (width) | width ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for setting in arguments.settings.split(","):
        for run_dir in sorted(p for p in (report / setting / arguments.recipe).glob("seed_*") if p.is_dir()):
            rows = np.load(run_dir / "splits.npz")["test"]
            threshold = read_sidecar(run_dir / WEIGHTS_FILE)["threshold"]
            seed = json.loads((run_dir / "config.json").read_text())["config"]["seed"]
            p_covid = predict(inference_model(load_model(run_dir / WEIGHTS_FILE)), data.images[rows])
            drawn = {unit: binary_metrics(p_covid, targets[rows], threshold=threshold, bootstrap=1000, seed=seed,
                                          groups=groups)
                     for unit, groups in (("image", None), ("patient", patient_ids(data.meta, rows)))}
            for name in SHOWN:
                (a, b), (c, d) = drawn["image"]["ci95"][name], drawn["patient"]["ci95"][name]
                print(f"| {setting} | {run_dir.name} | {len(rows)} / {drawn['patient']['bootstrap']['units']} | {name} | "
                      f"{drawn['image'][name]:.3f} | [{a:.3f}, {b:.3f}] ({b - a:.3f}) | [{c:.3f}, {d:.3f}] ({d - c:.3f}) | "
                      f"{(d - c) / (b - a):.2f} |")


if __name__ == "__main__":
    main()
