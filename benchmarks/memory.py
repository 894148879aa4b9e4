"""Memory benchmark: is resident memory flat over a long run, and what does a big set cost?

    python benchmarks/memory.py                      # 10 epochs on 3000 synthetic images
    python benchmarks/memory.py --size 100000 --epochs 1

Trains through launch/train.py (one CPU process) and prints the main process's resident
memory after each epoch (recorded in metrics.json) and the peak (from /usr/bin/time-like
accounting of the child: ru_maxrss). Not a test: the figures go in notes and the README.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3000, help="synthetic images")
    parser.add_argument("--epochs", type=int, default=10, help="epochs to train")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--cpu", "--dataset", "synthetic",
                        "--synthetic-size", str(arguments.size), "--epochs", str(arguments.epochs),
                        "--output-dir", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"synthetic images: {arguments.size}, uint8 set: {arguments.size * 64 * 64 / 2**20:.0f} MiB")
    for record in history:
        print(f"epoch {record['epoch']:>3}: resident {record['rss_mb']:.0f} MiB")
    if len(history) >= 2:
        second, last = history[1]["rss_mb"], history[-1]["rss_mb"]
        print(f"epoch {len(history)} / epoch 2 resident memory: {last / second:.3f}")
    print(f"peak resident memory of the training process: {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
