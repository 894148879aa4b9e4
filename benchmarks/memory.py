"""Memory benchmark: what holding the set costs per process and per job, copied or mapped.

    python benchmarks/memory.py                               # 100,000 synthetic 224 px images, 1/2/4 processes
    python benchmarks/memory.py --images 20000 --processes 1,2
    python benchmarks/memory.py --over-epochs                 # resident memory over 10 epochs: flat?

(1) Memory. The same synthetic set is written twice: as an ``.npz`` archive, which each
process reads whole into its own memory (today's MCFAM format), and as the store
``covid-ddp-prepare --format store`` writes (``.npy``), which each process maps read-only.
For each layout and process count a real CPU job is launched (``accelerate launch``) that
starts as ``covid-ddp-train`` does (``Session``, ``load_training_data``, the split,
``prepare_run``: loaders, pixel statistics, model, optimizer), trains ``--steps`` steps with
``engine.train_one_epoch``, then draws the rest of its epoch's batches without the model (an
epoch's reads of the set, in seconds instead of an hour). Every 0.5 s this script reads each
process of the job (ranks, the launcher, DataLoader workers) from /proc: its resident memory
(RSS, peak = the kernel's VmHWM) and its proportional share (PSS: a page mapped by k
processes counts 1/k in each). Printed: the largest rank's peak RSS and PSS, and the job's peak
of summed PSS, which is what the machine holds. A layout whose copies would not fit the memory
available now is skipped with a line saying so.

(2) Speed. One process trains ``--speed-steps`` steps (after 2 unmeasured) of ``--model`` at
the set's size, in the default precision, with the set held in memory (the archive, read
whole), and from the store with 0 workers (batches cut from the mapping in the training
process) and with ``--workers`` DataLoader workers. The store was just written, so its pages
are in the page cache: this measures gathering from a mapping, not a disk.

The synthetic images are a pool of ``--pool`` distinct images repeated to ``--images`` rows
(generating 100,000 at 224 px takes ten minutes; memory does not care what the pixels are).
Not a test: the machine may be shared and noisy, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVERY_S = 0.5  # reading smaps_rollup of a process mapping GBs costs the kernel milliseconds
GiB = 2**30


# --- the data: one pool, two layouts ----------------------------------------------------------


@dataclasses.dataclass
class RepeatedPool:
    """``count`` rows cycling through ``pool``: sliced like an array, never held whole."""

    pool: np.ndarray
    count: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.pool.shape[1:])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.pool[np.arange(self.count)[rows] % len(self.pool)]


def write_layouts(scratch: Path, images: int, size: int, pool: int) -> dict[str, Path]:
    """Two data folders of the same set: ``archive`` (``.npz``, read whole) and ``store`` (``.npy``, mapped)."""
    from covid_ddp.data.format import LABELS_FILE, LABELS_KEY
    from covid_ddp.data.image_rows import write_store
    from covid_ddp.data.store import IMAGES_KEY, images_name
    from covid_ddp.data.synthetic import make_synthetic

    folders = {"archive": scratch / "archive", "store": scratch / "store"}
    store_file = folders["store"] / images_name(size, store=True)
    if store_file.is_file():  # --scratch kept from an earlier run
        return folders
    started = time.monotonic()
    pool_images, pool_labels = make_synthetic(pool, seed=0, image_size=size)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / LABELS_FILE, **{LABELS_KEY: pool_labels[np.arange(images) % pool]})
    write_store(store_file, RepeatedPool(pool_images, images))
    # An .npz is a zip of .npy files: the archive holds the store's very bytes (stored, not
    # deflated: np.load reads either whole into memory alike, and deflating 5 GB takes minutes).
    with zipfile.ZipFile(folders["archive"] / images_name(size), "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(store_file, arcname=f"{IMAGES_KEY}.npy")
    print(f"wrote {images:,} images of {size}x{size} ({images * size * size / GiB:.1f} GiB) twice in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return folders


# --- the job, seen from /proc ------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _is_rank(pid: int) -> bool:
    try:
        return "--worker" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False


def watch(command: list[str]) -> dict:
    """Run ``command``; the peaks of its processes' memory, in GiB."""
    # The job's output goes to a file: a pipe read only at the end would block a chatty job.
    console = tempfile.TemporaryFile(mode="w+")
    job = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    peak_rss, peak_pss, peak_job_pss, ranks = {}, {}, 0, set()
    while job.poll() is None:
        total = 0
        for pid in _descendants(job.pid):
            try:
                pss = _pss_kib(pid)
                peak_rss[pid] = max(peak_rss.get(pid, 0), _status_kib(pid, "VmHWM"))
            except OSError:  # it ended between the listing and the read
                continue
            peak_pss[pid] = max(peak_pss.get(pid, 0), pss)
            total += pss
            if pid not in ranks and _is_rank(pid):
                ranks.add(pid)
        peak_job_pss = max(peak_job_pss, total)
        time.sleep(SAMPLE_EVERY_S)
    console.seek(0)
    output = console.read()
    console.close()
    if job.returncode != 0:
        raise SystemExit(f"the job failed ({job.returncode}):\n{output[-3000:]}")
    ranks = ranks or set(peak_rss)
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "rank_rss": max(peak_rss[p] for p in ranks) / 2**20,
            "rank_pss": max(peak_pss[p] for p in ranks) / 2**20, "job_pss": peak_job_pss / 2**20}


def accelerate_command(processes: int, *arguments: str) -> list[str]:
    # Several CPU processes: accelerate's --multi_gpu starts them (gloo) where no GPU is; the ranks
    # themselves stay on the CPU (TrainConfig(cpu=True)) on a GPU machine too.
    several = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--cpu"]
    return [sys.executable, "-m", "accelerate.commands.launch", *several, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", __file__, *arguments]


def fits(layout: str, processes: int, set_bytes: int) -> tuple[bool, float]:
    """Whether the job's copies fit in the memory available now (a rank beyond its data: torch, and
    the activations of its share of the batch: about 2 GiB for Net at 224 px)."""
    need = (processes * set_bytes if layout == "archive" else set_bytes) + processes * 2 * GiB
    available = _meminfo_kib("MemAvailable") * 1024
    return need < 0.9 * available, need / GiB


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --- inside a rank: start as covid-ddp-train does, train a few steps, read the epoch ----------


def run_rank(arguments) -> None:
    from covid_ddp.data.format import to_binary
    from covid_ddp.data.splits import make_split
    from covid_ddp.training.config import TrainConfig, settle_batches
    from covid_ddp.training.engine import train_one_epoch
    from covid_ddp.training.interrupt import GracefulStop
    from covid_ddp.training.preparation import prepare_run
    from covid_ddp.training.session import Session, start_job
    from covid_ddp.training.trainer import load_training_data

    config = TrainConfig(data_dir=[arguments.data_dir], image_size=arguments.image_size, model=arguments.model,
                         cpu=True, workers=arguments.rank_workers)
    session = Session(*start_job(config))
    accelerator, config = session.accelerator, session.config
    data = load_training_data(session, config)
    config = dataclasses.replace(config, image_size=data.image_size)
    targets = to_binary(data.labels)
    split = make_split(targets, config.split_plan(), data.meta)
    config, _ = settle_batches(config, len(split.train), accelerator.num_processes, accelerator.device.type)
    run = prepare_run(config, data, targets, split, accelerator)
    loader = run.train_loader
    batch = loader.batch_size

    def seconds_to_train(steps: int) -> float:
        """Seconds to train ``steps`` batches from a fresh copy of the loader (its workers start inside)."""
        part = dataclasses.replace(loader, rows=loader.rows[: steps * batch])
        started = time.perf_counter()
        train_one_epoch(run.model, run.optimizer, part, accelerator, config, 1, stopper=stopper)
        return time.perf_counter() - started

    warmup, steps = arguments.warmup_steps, arguments.steps
    with GracefulStop() as stopper:
        if warmup:
            seconds_to_train(warmup)  # the first steps: allocations, kernel choices
        # A fresh loader starts its DataLoader workers inside its first steps, so warm-up plus the
        # timed steps and the warm-up alone are both timed from fresh loaders: the difference is
        # the timed steps' steady state.
        train_seconds = seconds_to_train(warmup + steps) - (seconds_to_train(warmup) if warmup else 0.0)
    started = time.perf_counter()
    loader.set_epoch(2)
    drawn = sum(len(drawn_batch[1]) for drawn_batch in loader)  # the whole epoch's reads of this rank, no model
    read_seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(json.dumps({"train_img_s": steps * batch / train_seconds,
                          "epoch_read_s": read_seconds, "rows_drawn": drawn,
                          "processes": accelerator.num_processes, "placement": run.train_loader_kind,
                          "precision": config.mixed_precision}), flush=True)
    accelerator.end_training()


# --- the report -----------------------------------------------------------------------------


def memory_table(folders: dict[str, Path], arguments) -> None:
    set_bytes = arguments.images * arguments.image_size**2
    print(f"\n(1) memory: {arguments.images:,} images of {arguments.image_size}x{arguments.image_size} "
          f"({set_bytes / GiB:.1f} GiB as uint8), {arguments.steps} training steps then one epoch's reads per job; GiB")
    print("| processes | set held as | peak RSS of a rank | peak PSS of a rank | whole job (PSS summed) |")
    print("| --- | --- | --- | --- | --- |")
    for processes in arguments.processes:
        for layout in ("archive", "store"):
            ok, need = fits(layout, processes, set_bytes)
            label = {"archive": "a copy per process (.npz)", "store": "the mapped store (.npy)"}[layout]
            if not ok:
                print(f"| {processes} | {label} | skipped: needs about {need:.0f} GiB, "
                      f"{_meminfo_kib('MemAvailable') / 2**20:.0f} GiB available | | |", flush=True)
                continue
            figures = watch(accelerate_command(processes, *rank_flags(folders[layout], arguments, 0)))
            assert figures["processes"] == processes, figures
            print(f"| {processes} | {label} | {figures['rank_rss']:.2f} | {figures['rank_pss']:.2f} | "
                  f"{figures['job_pss']:.2f} |", flush=True)


def speed_table(folders: dict[str, Path], arguments) -> None:
    print(f"\n(2) training speed, 1 process, {arguments.model} at {arguments.image_size} px, "
          f"{arguments.speed_steps} steps of 100 after {arguments.warmup_steps}")
    print("| set | batches gathered by | images/s | ratio to in memory |")
    print("| --- | --- | --- | --- |")
    cases = (("held in memory (.npz read whole)", "archive", 0), ("the mapped store", "store", 0),
             ("the mapped store", "store", arguments.workers))
    reference = None
    for label, layout, workers in cases:
        flags = rank_flags(folders[layout], arguments, workers, steps=arguments.speed_steps)
        figures = watch([sys.executable, __file__, *flags])
        rate = figures["train_img_s"]
        reference = reference or rate
        gatherer = f"{workers} DataLoader workers" if workers else "the training process"
        print(f"| {label} | {gatherer} | {rate:.1f} ({figures['precision']}) | {rate / reference:.2f} |", flush=True)


def rank_flags(folder: Path, arguments, workers: int, steps: int | None = None) -> list[str]:
    return ["--worker", "--data-dir", str(folder), "--image-size", str(arguments.image_size), "--model",
            arguments.model, "--rank-workers", str(workers), "--steps", str(steps or arguments.steps),
            "--warmup-steps", str(arguments.warmup_steps)]


def over_epochs(size: int, epochs: int) -> None:
    """Resident memory of one training process after each epoch: flat over a long run?"""
    import resource

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--cpu", "--dataset", "synthetic",
                        "--synthetic-size", str(size), "--epochs", str(epochs), "--output-dir", str(run_dir)],
                       check=True, stdout=subprocess.DEVNULL)
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
    print(f"synthetic images: {size}, uint8 set: {size * 64 * 64 / 2**20:.0f} MiB")
    for record in history:
        print(f"epoch {record['epoch']:>3}: resident {record['rss_mb']:.0f} MiB")
    if len(history) >= 2:
        print(f"epoch {len(history)} / epoch 2 resident memory: {history[-1]['rss_mb'] / history[1]['rss_mb']:.3f}")
    print(f"peak resident memory of the training process: "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="rows of the synthetic set")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pool", type=int, default=2000, help="distinct synthetic images repeated to --images")
    parser.add_argument("--processes", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4])
    parser.add_argument("--model", default="net", help="the network trained (default: the seed's Net)")
    parser.add_argument("--steps", type=int, default=3, help="training steps of a memory job")
    parser.add_argument("--speed-steps", type=int, default=10, help="timed training steps of a speed run")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the store's second speed run")
    parser.add_argument("--scratch", type=Path, help="keep the written sets here (default: a temporary folder)")
    parser.add_argument("--skip", choices=("memory", "speed"), help="leave out one of the two parts")
    parser.add_argument("--over-epochs", action="store_true", help="instead: resident memory over a 10-epoch run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a rank of a measured job
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rank-workers", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        return run_rank(arguments)
    if arguments.over_epochs:
        return over_epochs(3000, 10)
    with tempfile.TemporaryDirectory() as temporary:
        scratch = arguments.scratch or Path(temporary)
        folders = write_layouts(scratch, arguments.images, arguments.image_size, arguments.pool)
        print(f"machine: {os.cpu_count()} CPUs, {_meminfo_kib('MemTotal') / 2**20:.0f} GiB")
        if arguments.skip != "memory":
            memory_table(folders, arguments)
        if arguments.skip != "speed":
            speed_table(folders, arguments)


if __name__ == "__main__":
    main()
