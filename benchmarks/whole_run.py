"""A whole run, as a user starts it: the original script vs covid-ddp-train with default flags.

    python benchmarks/whole_run.py                       # 1 epoch, 3 repeats, a 10,000-image npz folder
    python benchmarks/whole_run.py --epochs 10 --repeats 1 --variant "fp32=--mixed-precision no"
    git worktree add /tmp/before <commit> && python benchmarks/whole_run.py --checkout before=/tmp/before

Each command runs as a fresh process on the same MCFAM-format folder (10,000 synthetic
images, written once to a temporary folder, or ``--data-dir``), timed from start to exit:
imports, loading, split, training, evaluation, writing the weights. The variants take
turns in every repeat (a shared machine is noisy: compare within one run); the
median and the ratio to the original are printed, and for covid-ddp-train its fixed costs: the
whole process less the epochs' own seconds (metrics.json's history), i.e. start-up (imports,
loading, split, model) and finish (the final scoring, figures, files). ``--floor`` adds what any
default run pays whatever covid_ddp does, each part timed in a fresh process: importing torch, its
first optimizer (torch 2.13's ``torch.optim`` imports ``torch._dynamo``) and the fp32 scoring of
the test split by the shipped weights. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_data(folder: Path, size: int) -> Path:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from covid_ddp.data.synthetic import make_synthetic

    images, labels = make_synthetic(size, seed=1)
    np.savez(folder / "train_images64.npz", train_images=images)
    np.savez(folder / "train_labels.npz", train_labels=labels)
    return folder


def commands(args, data: Path, work: Path) -> dict[str, tuple[list[str], Path | None, Path]]:
    """name -> (command, its run folder (None: the original's), the checkout it runs from)."""
    epochs = ["--epochs", str(args.epochs)]
    chosen = {"original script": ([sys.executable, str(ROOT / "benchmarks" / "original_script.py"),
                                   "--data-dir", str(data), "--output", str(work / "original.pth"), *epochs], None, ROOT)}

    def train(checkout: Path, name: str, flags: list[str]):
        return ([sys.executable, str(checkout / "launch" / "train.py"), "--data-dir", str(data), *epochs, "--overwrite",
                 "--output-dir", str(work / name), *flags], work / name, checkout)

    chosen["covid-ddp-train (defaults)"] = train(ROOT, "default", [])
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        chosen[f"covid-ddp-train {name}"] = train(ROOT, name, flags.split())
    for spec in args.checkout:
        name, _, folder = spec.partition("=")
        chosen[f"{name} (defaults)"] = train(Path(folder).resolve(), f"checkout-{name}", [])
    return chosen


FLOOR_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import torch
imported = time.perf_counter()
from covid_ddp import predict
from covid_ddp.models.net import Net, for_inference
net = Net()
before = time.perf_counter()
torch.optim.Adam(net.parameters(), lr=1e-3)
optimizer = time.perf_counter()
import numpy as np
images = np.random.default_rng(0).integers(0, 256, (int(sys.argv[1]), 64, 64), dtype=np.uint8)
model = for_inference(net.eval())
before_scoring = time.perf_counter()
predict(model, images)
print(json.dumps({"import torch": imported - started, "first optimizer": optimizer - before,
                  "fp32 test scoring": time.perf_counter() - before_scoring}))
"""


def held_out_image_count(data: Path) -> int:
    """The images of the default split's test part, as covid-ddp-train splits the folder's labels."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from covid_ddp.data.format import to_binary
    from covid_ddp.data.splits import SplitPlan, make_split

    with np.load(data / "train_labels.npz", allow_pickle=False) as labels:
        return len(make_split(to_binary(labels["train_labels"]), SplitPlan()).test)


def measure_floor(test_images: int, repeats: int) -> dict[str, float]:
    """The medians of the parts every default run pays, each repeat a fresh process."""
    parts = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, str(test_images)], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        parts.append(json.loads(done.stdout))
    return {name: statistics.median(part[name] for part in parts) for name in parts[0]}


def epoch_seconds(run_dir: Path | None) -> float | None:
    """The training epochs' own seconds (validation included), from the run's metrics.json."""
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return None
    return sum(entry.get("seconds", 0.0) for entry in json.loads((run_dir / "metrics.json").read_text())["history"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="an MCFAM-format folder (default: 10,000 synthetic images, made once)")
    parser.add_argument("--size", type=int, default=10000, help="images of the default synthetic folder")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="another covid-ddp-train run to time, e.g. 'fp32=--mixed-precision no'")
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=DIR",
                        help="a default run of another covid_ddp checkout (an earlier commit: git worktree add DIR "
                             "COMMIT), timed the same way")
    parser.add_argument("--floor", action="store_true",
                        help="also time the parts any default run pays: torch's import, its first optimizer, "
                             "the fp32 scoring of the test split")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(args.data_dir) if args.data_dir else make_data(work, args.size)
        runs = commands(args, data, work)
        seconds = {name: [] for name in runs}
        fixed = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (command, run_dir, checkout) in runs.items():
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, cwd=work,
                                      env={**os.environ, "PYTHONPATH": str(checkout)})
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                seconds[name].append(time.perf_counter() - started)
                training = epoch_seconds(run_dir)
                if training is not None:
                    fixed[name].append(seconds[name][-1] - training)
        test_images = held_out_image_count(data)
    import torch

    print(f"{args.epochs} epoch(s) on {'%s' % args.data_dir if args.data_dir else f'{args.size} synthetic images'}, "
          f"whole process, {args.repeats} repeat(s) taking turns; torch {torch.__version__}, {os.cpu_count()} cores")
    reference = statistics.median(seconds["original script"])
    print(f"{'command':<40}{'median s':>10}{'runs s':>28}{'vs original':>14}{'fixed costs s':>16}")
    for name, values in seconds.items():
        median = statistics.median(values)
        runs_text = ", ".join(f"{v:.1f}" for v in values)
        fixed_text = f"{statistics.median(fixed[name]):.1f}" if fixed[name] else "-"
        print(f"{name:<40}{median:>10.1f}{runs_text:>28}{reference / median:>13.2f}x{fixed_text:>16}")
    if args.floor:
        floor = measure_floor(test_images, args.repeats)
        parts = ", ".join(f"{name} {took:.1f} s" for name, took in floor.items())
        print(f"floor of the fixed costs ({test_images} test images): {sum(floor.values()):.1f} s ({parts})")


if __name__ == "__main__":
    main()
