"""How the DEFAULT training recipe does on small user data sets: N real chest X-rays taken the user's way,
PNGs -> covid-ddp-prepare -> covid-ddp-train (defaults) -> covid-ddp-evaluate (val and test), 3 seeds each.

    python scripts/small_sets.py --work /tmp/smallsets --output /tmp/smallsets/results.json

For each N (``--sizes``) a stratified sample of the real set (seed 0, the real set's 4-class ratio) is
written as PNGs plus a CSV (path,label,patient_id,view,source) and prepared into ``<work>/data-N``
(reused when it already holds prepare.json). Each seed trains with ``--data-dir <work>/data-N
--group-split --seed S --output-dir <work>/runs/N/seed_S --log-images-every 0 --bootstrap 0`` and no
other flag. Figures come from the run folder (config.json) and evaluate's evaluation.json, never from
the training output, so later versions that print other lines still work; the wall time is measured
here. The commands run as ``sys.executable -c "from covid_ddp.commands.<module> import main ..."``, which is
what the console scripts do, with whichever covid_ddp is importable (PYTHONPATH). std is over seeds (n - 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = next((p for p in (ROOT.parent / "shared/data/real-cxr", Path("/work/shared/data/real-cxr")) if p.is_dir()),
                ROOT.parent / "shared/data/real-cxr")
LABEL_NAMES = {0: ("normal", ""), 1: ("other", ""), 2: ("covid", ""), 3: ("covid", "AP")}  # prepare.py's names
COMMANDS = {"prepare": "covid-ddp-prepare", "train": "covid-ddp-train", "evaluate": "covid-ddp-evaluate"}


def run(module: str, *args, log: Path | None = None) -> float:
    """Run a covid_ddp command as its console script does; returns its wall time in seconds."""
    code = f"import sys; sys.argv[0] = {COMMANDS[module]!r}; from covid_ddp.commands.{module} import main; sys.exit(main())"
    command = [sys.executable, "-c", code, *map(str, args)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if log is not None:
        log.write_text(f"$ {COMMANDS[module]} {' '.join(map(str, args))}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"{COMMANDS[module]} failed (exit {done.returncode}): {last}")
    return seconds


def prepared_folder(size: int, real: Path, work: Path) -> Path:
    """``<work>/data-N``: a stratified sample of N real images, written as PNGs and prepared by the user command."""
    folder = work / f"data-{size}"
    if (folder / "prepare.json").is_file():
        return folder
    images = np.load(real / "train_images64.npz", allow_pickle=False)["train_images"]
    classes = np.load(real / "train_labels.npz", allow_pickle=False)["train_labels"].argmax(1)
    meta = np.load(real / "meta.npz", allow_pickle=False)
    rows, _ = train_test_split(np.arange(len(images)), train_size=size, stratify=classes, random_state=0)
    with tempfile.TemporaryDirectory(prefix=f"pngs-{size}-") as pngs:
        table = Path(pngs) / "images.csv"
        with open(table, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "patient_id", "view", "source"])
            for row in sorted(rows):
                name = f"img{row:04d}.png"
                Image.fromarray(images[row], mode="L").save(Path(pngs) / name)
                label, view = LABEL_NAMES[int(classes[row])]
                writer.writerow([name, label, meta["patient_id"][row], view, meta["dataset"][row]])
        shutil.rmtree(folder, ignore_errors=True)
        run("prepare", "--output-dir", folder, table, log=work / f"prepare-{size}.log")
    return folder


def one_run(folder: Path, seed: int, out: Path) -> dict:
    """Train with the defaults, evaluate on val and test; every figure of the run."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = run("train", "--data-dir", folder, "--group-split", "--seed", seed, "--output-dir", out,
                  "--log-images-every", "0", "--bootstrap", "0", log=out.parent / f"seed_{seed}.train.log")
    recorded = json.loads((out / "config.json").read_text())
    config, sizes = recorded["config"], recorded["data"]["split_sizes"]
    shipped = json.loads((out / "metrics.json").read_text()).get("shipped", {})
    result = {"seed": seed, "train_seconds": round(seconds, 1), **{f"{k}_images": v for k, v in sizes.items()},
              "batch_size": config["batch_size"], "steps_per_epoch": sizes["train"] // config["batch_size"],
              **{key: config.get(key) for key in ("grad_accum_steps", "epochs", "mixed_precision", "select_by")},
              "shipped_epoch": shipped.get("epoch")}
    for split in ("val", "test"):
        run("evaluate", "--weights", out / "COVID_binary_classifier.pth", "--split", split,
            log=out.parent / f"seed_{seed}.eval-{split}.log")
        metrics = json.loads((out / f"evaluation-{split}" / "evaluation.json").read_text())["metrics"]
        result[split] = {name: metrics.get(name) for name in ("roc_auc", "accuracy", "sensitivity", "specificity", "n",
                                                              "n_per_class", "threshold", "loss", "brier")}
    return result


def stats(values: list, digits: int = 3) -> str:
    """mean ± sample std over seeds ('n/a' where a metric is undefined in some run)."""
    if not values or any(v is None for v in values):
        return "n/a"
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(results: dict) -> str:
    lines = ["| size | train/val/test images | batch | steps/epoch | val AUC | val accuracy | test AUC | "
             "test accuracy | threshold range | run time (s) |", "|" + " --- |" * 10]
    for size, all_runs in results.items():
        runs = [r for r in all_runs if "error" not in r]
        if not runs:
            lines.append(f"| {size} | {all_runs[0]['error']} |" + " |" * 8)
            continue

        def cells(key, split=None):
            return [r[split][key] if split else r[key] for r in runs]
        distinct = lambda values: "/".join(str(v) for v in dict.fromkeys(values))  # noqa: E731
        parts = "/".join(distinct(cells(f"{p}_images")) for p in ("train", "val", "test"))
        thresholds = cells("threshold", "test")
        shown = size if len(runs) == len(all_runs) else f"{size} ({len(runs)} of {len(all_runs)} runs)"
        lines.append(f"| {shown} | {parts} | {distinct(cells('batch_size'))} | {distinct(cells('steps_per_epoch'))} | "
                     f"{stats(cells('roc_auc', 'val'))} | {stats(cells('accuracy', 'val'))} | "
                     f"{stats(cells('roc_auc', 'test'))} | {stats(cells('accuracy', 'test'))} | "
                     f"{min(thresholds):.3f}-{max(thresholds):.3f} | {stats(cells('train_seconds'), 0)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300,1000", help="comma-separated numbers of images")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds")
    parser.add_argument("--real-cxr", type=Path, default=REAL_CXR, help="the real set to sample (default: %(default)s)")
    parser.add_argument("--work", type=Path, required=True, help="prepared folders (data-N) and runs go here")
    parser.add_argument("--output", type=Path, required=True, help="JSON with every per-seed figure")
    args = parser.parse_args()
    sizes, seeds = ([int(v) for v in text.split(",") if v.strip()] for text in (args.sizes, args.seeds))
    import covid_ddp
    results = {}
    for size in sizes:
        folder = prepared_folder(size, args.real_cxr, args.work)
        results[size] = []
        for seed in seeds:
            try:  # a failed run is a result too (an older version refused small sets); its log is kept
                results[size].append(one_run(folder, seed, args.work / "runs" / str(size) / f"seed_{seed}"))
            except RuntimeError as error:
                results[size].append({"seed": seed, "error": str(error)})
            r = results[size][-1]
            print(f"N={size} seed {seed}: " + (r.get("error") or f"val AUC {r['val']['roc_auc']:.3f}, test AUC "
                  f"{r['test']['roc_auc']:.3f}, test accuracy {r['test']['accuracy']:.3f}, {r['train_seconds']} s"),
                  flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"covid_ddp": covid_ddp.__file__, "real_cxr": str(args.real_cxr),
                                       "sizes": sizes, "seeds": seeds, "results": results}, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
