"""Run one training recipe over several seeds and report the mean and std of every test metric.

    python scripts/seeds.py --seeds 1,2,3 --output-dir runs/seeds -- --dataset synthetic --epochs 3
    python scripts/seeds.py --seeds 1,2,3 --output-dir runs/pl -- --data-dir ../shared/data/real-cxr --group-split

Everything after ``--`` goes to ``launch/train.py`` as is; each seed trains in
``<output-dir>/seed_<S>`` (``--seed S --output-dir ... --overwrite`` are added). Prints a table
and writes ``<output-dir>/summary.json``. ``--launcher "torchrun --nproc_per_node 2"`` runs
each seed with another launcher. std is the sample standard deviation (n - 1).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covid_ddp.files import write_json  # noqa: E402  (after the path set-up: runs from a checkout)
from covid_ddp.metrics import METRICS  # noqa: E402

TRAIN_SCRIPT = ROOT / "launch" / "train.py"


def run_seeds(seeds: list[int], output_dir: Path, train_flags: list[str], launcher: str = sys.executable) -> dict:
    """Train once per seed; returns {"runs": {seed: test metrics}, "summary": {metric: {mean, std, n}}}."""
    runs = {}
    for seed in seeds:
        run_dir = Path(output_dir) / f"seed_{seed}"
        command = [*shlex.split(launcher), str(TRAIN_SCRIPT), *train_flags, "--seed", str(seed),
                   "--output-dir", str(run_dir), "--overwrite"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"seed {seed} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
        runs[seed] = json.loads((run_dir / "metrics.json").read_text())["test"]
    return {"runs": runs, "summary": summarise(list(runs.values()))}


def summarise(results: list[dict]) -> dict:
    """Mean and sample std over runs of each metric defined in every run (None where it is not)."""
    summary = {}
    for name in (*METRICS, "threshold"):
        values = [r[name] for r in results if r.get(name) is not None]
        if len(values) < len(results) or not values:
            summary[name] = None
            continue
        summary[name] = {"mean": float(np.mean(values)),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'metric':<20}{'mean':>8}{'std':>8}"]
    for name, stats in summary.items():
        shown = "     n/a" if stats is None else f"{stats['mean']:>8.3f}{stats['std']:>8.3f}"
        lines.append(f"{name:<20}{shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--output-dir", required=True, help="one run folder per seed goes here")
    parser.add_argument("--launcher", default=sys.executable, help="command that runs launch/train.py")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then launch/train.py flags")
    args = parser.parse_args()
    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    result = run_seeds(seeds, Path(args.output_dir), flags, args.launcher)
    write_json(Path(args.output_dir) / "summary.json", {"seeds": seeds, "train_flags": flags, **result})
    print(format_summary(result["summary"]))


if __name__ == "__main__":
    main()
