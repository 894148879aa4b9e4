"""How each stage's time and memory grow with the number of images: 10,000, 100,000, 400,000.

    python benchmarks/scale.py                                  # every stage at 10,000, 100,000 and 400,000 images
    python benchmarks/scale.py --sizes 2000,10000 --output scale.json
    python benchmarks/scale.py --stages prepare,duplicates --sizes 10000,100000 --keep
    python benchmarks/scale.py --dry-run                        # every stage at 200 and 600 images of 64 px (CI)

Stages (``--stages``, in this order), each a fresh process, timed wall-clock from its start to its exit:

  prepare     ``covid-ddp-prepare --output-dir STORE LIST.csv --image-size 224 --format store``: N PNG files at
              224 px (class folders ``normal/`` and ``covid/``), listed in a CSV (path, label, patient_id, source)
  duplicates  ``covid_ddp.data.duplicates.find_duplicates`` over the prepared 224 px store, mapped with
              ``covid_ddp.data.store.read_store`` (this script's ``--child duplicates``); prints the pairs
  split       the split covid-ddp-train makes (``trainer.set_up_job``: ``split_groups``, then ``make_split``),
              of the default flags and of ``--group-split`` (patient ids), over N labels (the 64 px arrays)
  train       covid-ddp-train's own start-up on the store (``Session``, ``trainer.set_up_job``: the data loaded
              and hashed, the split, the blank check, the model with the training split's pixel statistics;
              ``preparation.prepare_run``), then ``--train-steps`` steps of ``engine.train_one_epoch`` from the
              start of epoch 1 (the whole epoch's order is drawn; the loop stops after those steps as on a
              signal). Reported: start-up until the first step, the first step, steps/s after
              ``--train-warmup`` steps, and the epoch EXTRAPOLATED as start-up + N_train / images/s (training
              steps only: no validation, no test, no run folder written)
  evaluate    ``covid-ddp-evaluate --weights W --data-dir ARRAYS --split all --bootstrap B``: ARRAYS is a store of
              the same N films at 64 px, scored by Net at 64 px (the default model; at 224 px Net scores 40-100
              images/s on this CPU, hours at 400,000)
  predict     ``covid-ddp-predict --weights W FOLDER --output CSV`` over the N PNG files at 224 px (up to
              ``--predict-max``, 100,000), each resized to the weights' 64 px, and in the same run a
              plain single-process loop (``--child predict-plain``: PIL open, grayscale, resize to the model's
              size with covid_ddp's filter (LANCZOS), batches of ``--predict-batch``, ``covid_ddp.load_model``'s forward pass, CSV), timed alike
  audit       ``covid-ddp-audit --weights W --data-dir ARRAYS --split all`` (a split over 20,000 images is audited
              on a sample of 20,000)

Memory: every ``--sample-every`` s this script reads /proc/PID/smaps_rollup of every process of the stage's
session (the stage and whatever it starts: decoding pools, DataLoader workers) and sums their proportional set
size (PSS: a page mapped by k processes counts 1/k in each, so a mapped store shared by workers counts once).
The peak of that sum is "peak PSS"; "anon" is the same for anonymous and shared memory only (Pss_Anon +
Pss_Shmem: what the process made, not pages of files it maps; a mapped store's pages are page cache the kernel
can drop). Also the stage process's own ru_maxrss (``os.wait4``; Linux folds the largest reaped child in).
A stage whose anonymous PSS passes ``--memory-cap-gib``, or that runs past ``--stage-timeout``, is killed and
its row says so (its seconds are then a lower bound); any failure is a row, and the run goes on.

Growth: between consecutive sizes, the exponent log(t2/t1) / log(n2/n1) of the wall seconds, of the stage's
own work seconds (where the stage times its call: imports and start-up left out) and of peak PSS (1.0:
linear, 0: constant, 2: quadratic), and the marginal cost per image ((m2 - m1) / (n2 - n1): 49 KiB an image is
one 224x224 uint8 copy of the set). At small sizes the constant part (imports, torch: ~300 MiB) hides the
growth: read the marginal figures and the largest pair of sizes.

Data (``--work-dir``, kept and reused; generated once for the largest size, the smaller sizes are its first
N images): ``covid_ddp.data.synthetic.make_synthetic`` films at 64 px in chunks of 1,000 (seeded by chunk),
upscaled to the image size (PIL bilinear), each with a smooth field of its own added (the generator's films
are so alike that, upscaled, about 2 in 1,000 pairs would count as near duplicates), written as PNG
(compress level 1) over a process pool: 10,000 in about 15 s here. In every chunk of 1,000, image 50 is an
exact copy of image 49 and image 170 a near copy of image 169 (brightness and contrast changed), same label:
2 duplicate pairs per 1,000 images, and no others. Each 3 consecutive images are one patient. The 64 px
arrays and labels are kept as .npy (the split stage reads them). ``list-N.csv`` lists the first N PNGs
(path, label, patient_id, source: covid-ddp-prepare's CSV); ``sets/N/`` holds hard links to them (for
covid-ddp-predict, which takes folders). All under WORK/images-S (S: the image size). Disk: about 24 KB a
PNG and 49 KiB an image in a 224 px store (400,000 images: ~10 GB of PNGs and a 20 GB store). Stores and
stage outputs (WORK/stores-S, WORK/out-S) are deleted after each size unless ``--keep`` (a kept store is
reused by later runs that do not run ``prepare``). Where ``prepare`` failed or was not run, the later
stages read a store this script writes directly with the same pixels, labels and meta.npz (said in their
rows). One run at a time in a work dir (WORK/.lock): two would delete each other's stores and share the cores.

Duration at the default sizes on a 2-core CPU: about an hour and a half, most of it writing and preparing
400,000 PNGs.

Weights for evaluate, predict and audit: one tiny run, made once and kept (``covid-ddp-train --dataset
synthetic --synthetic-size 300 --image-size 64 --epochs 1``; Net at 64 px).

Not a test: the machine may be shared, compare figures of one run. Output: a table per stage and size, the
growth exponents, details of train, split and predict, and the machine, torch version and git commit;
``--output FILE.json`` keeps every figure. Exit status 1 when any stage failed (after the whole table; a
stage skipped on purpose, predict over ``--predict-max``, is no failure).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("prepare", "duplicates", "split", "train", "evaluate", "predict", "audit")
DEFAULT_SIZES = (10_000, 100_000, 400_000)
DRY_SIZES = (200, 600)
IMAGE_SIZE, DRY_IMAGE_SIZE = 224, 64  # the side of the PNGs and of the store (--image-size)
SYNTHETIC_SIZE = 64  # the generator's own size, upscaled to --image-size
FIELD_GRID, FIELD_LEVELS = 10, 30.0  # each image's own smooth field (render_chunk)
CHUNK = 1000  # images generated per task (and per seed): image i is the same whatever the largest size
EXACT_COPY, NEAR_COPY = 50, 170  # in each chunk: a copy of the image before it (exact / near)
PATIENT_IMAGES = 3  # consecutive images of one patient
RESULT_TAG = "SCALE_RESULT "  # a child's last line: this, then its JSON
BYTES_PER_PNG_GUESS = 30_000  # at 224 px (measured: 23.5 KB), with a margin
GENERATOR_VERSION = 2  # images made by another version of render_chunk are made again


# --- the machine ----------------------------------------------------------------------------------


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def machine() -> dict:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:  # noqa: BLE001
        torch_version = "unknown"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    changed = _git("status", "--porcelain", "--", "covid_ddp")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "memory_gib": round(meminfo_kib("MemTotal") / 2**20, 1),
            "torch": torch_version, "commit": commit,
            "package_changed_files": len(changed.splitlines()) if changed else 0, "python": sys.version.split()[0]}


def package_state() -> str:
    """What a stage ran (the package may change during a long run): the git tree of covid_ddp/ at HEAD
    (commits that touch other files leave it alone), and '+changes' while the working tree differs."""
    tree = _git("rev-parse", "--short", "HEAD:covid_ddp") or "unknown"
    return f"covid_ddp tree {tree}" + ("+changes" if _git("status", "--porcelain", "--", "covid_ddp") else "")


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# --- measuring a process ----------------------------------------------------------------------------


def _session_members(session: int) -> list[int]:
    """Every live process of ``session`` (the stage's, started with start_new_session)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == session and fields[0] != b"Z":  # state, ppid, pgrp, session
            members.append(int(entry.name))
    return members


def _pss_kib(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Anon + Pss_Shmem) of one process, KiB (what psutil's memory_full_info().pss reads)."""
    pss = anon = 0
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                anon += int(line.split()[1])
    return pss, anon


class Sampler(threading.Thread):
    """Samples the stage's session every ``every`` s: peak summed PSS and anonymous PSS; kills the
    session's process group past the memory cap or the timeout."""

    def __init__(self, pid: int, started: float, every: float, cap_kib: int, timeout: float):
        super().__init__(daemon=True)
        self.pid, self.started, self.every, self.cap_kib, self.timeout = pid, started, every, cap_kib, timeout
        self.peak_pss = self.peak_anon = self.peak_processes = 0
        self.killed = ""
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            total = anon = 0
            members = _session_members(self.pid)
            for pid in members:
                try:
                    pss, pss_anon = _pss_kib(pid)
                except (OSError, ValueError):  # it ended between the listing and the read
                    continue
                total, anon = total + pss, anon + pss_anon
            self.peak_pss, self.peak_anon = max(self.peak_pss, total), max(self.peak_anon, anon)
            self.peak_processes = max(self.peak_processes, len(members))
            if not self.killed and self.cap_kib and anon > self.cap_kib:
                self.killed = f"killed: anonymous PSS {anon / 2**20:.1f} GiB passed --memory-cap-gib"
                kill_group(self.pid)
            elif not self.killed and self.timeout and time.perf_counter() - self.started > self.timeout:
                self.killed = f"killed: ran past --stage-timeout {self.timeout:.0f} s"
                kill_group(self.pid)
            self.done.wait(self.every)


def kill_group(pid: int) -> None:
    """The stage's own process group (it leads it: started with start_new_session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def measure(command: list[str], settings, log: Path, env: dict | None = None) -> dict:
    """Run ``command`` as a fresh process in its own session; its wall seconds, peak summed PSS and
    anonymous PSS (MiB, over the session), its ru_maxrss, exit status and last output lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        spawned = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                   start_new_session=True)
        sampler = Sampler(process.pid, started, settings.sample_every, int(settings.memory_cap_gib * 2**20),
                          settings.stage_timeout)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C: the stage goes with this script
            kill_group(process.pid)
            raise
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # (Popen must not wait for it again)
        sampler.done.set()
        sampler.join()
        if _session_members(process.pid):  # anything it left behind in its group (none, normally)
            kill_group(process.pid)
    text = log.read_text(errors="replace")
    child = None
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_TAG):
            child = json.loads(line[len(RESULT_TAG):])
            break
    return {"wall_s": wall, "spawned": spawned, "returncode": process.returncode, "killed": sampler.killed,
            "peak_pss_mib": sampler.peak_pss / 1024, "peak_anon_mib": sampler.peak_anon / 1024,
            "ru_maxrss_mib": usage.ru_maxrss / 1024, "processes": sampler.peak_processes, "child": child,
            "tail": "\n".join(text.splitlines()[-15:]), "log": str(log)}


# --- the synthetic images ---------------------------------------------------------------------------


def upscale(image64: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if side == SYNTHETIC_SIZE:
        return image64
    return np.asarray(Image.fromarray(image64).resize((side, side), Image.BILINEAR))


def _interpolation(side: int, coarse: int) -> np.ndarray:
    """(side, coarse) bilinear weights: M @ grid @ M.T is the grid upsampled to side x side."""
    position = np.linspace(0, coarse - 1, side)
    lower = np.floor(position).astype(int).clip(0, coarse - 2)
    weights = np.zeros((side, coarse), dtype=np.float32)
    weights[np.arange(side), lower] = 1 - (position - lower)
    weights[np.arange(side), lower + 1] = position - lower
    return weights


def render_chunk(index: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk ``index``: (images at ``side`` px, the 64 px films, classes 0-3), copies planted.

    The generator's films are alike (the same anatomy, small variations): compared as
    find_duplicates compares them, about 2 of every 1,000 pairs would pass its 0.985 once upscaled.
    So each image gets its own smooth field (a 10x10 grid of normal values, upsampled, 30 gray
    levels a unit): then no two distinct images of 3,000 come above 0.96, and the planted copies
    are the only pairs."""
    from covid_ddp.data.synthetic import make_synthetic

    images64, labels = make_synthetic(CHUNK, seed=10_000 + index)
    classes = labels.argmax(axis=1).astype(np.int8)
    fields = np.random.default_rng(20_000 + index).standard_normal((CHUNK, FIELD_GRID, FIELD_GRID)).astype(np.float32)
    weights = _interpolation(side, FIELD_GRID)
    images = np.empty((CHUNK, side, side), dtype=np.uint8)
    for row in range(CHUNK):
        field = FIELD_LEVELS * (weights @ fields[row] @ weights.T)
        images[row] = np.clip(upscale(images64[row], side) + field, 0, 255).round()
    for pictures in (images64, images):
        pictures[EXACT_COPY] = pictures[EXACT_COPY - 1]
        near = pictures[NEAR_COPY - 1].astype(np.float32) * 1.04 + 3  # brightness, contrast: same once standardised
        pictures[NEAR_COPY] = np.clip(near, 0, 255).round()
    classes[EXACT_COPY], classes[NEAR_COPY] = classes[EXACT_COPY - 1], classes[NEAR_COPY - 1]
    return images, images64, classes


def make_chunk(task: tuple[int, str, int]) -> int:
    """Chunk ``index`` written: its PNGs (compress level 1), then its 64 px arrays (the chunk's marker)."""
    from PIL import Image

    index, folder, side = task
    folder = Path(folder)
    images, images64, classes = render_chunk(index, side)
    for offset, (image, label) in enumerate(zip(images, classes)):
        Image.fromarray(image).save(folder / png_path(index * CHUNK + offset, label), compress_level=1)
    target = folder / "chunks" / f"{index:05d}.npz"
    np.savez(target.with_suffix(".tmp.npz"), images=images64, classes=classes)
    os.replace(target.with_suffix(".tmp.npz"), target)
    return index


def rendered(task: tuple[int, int]) -> np.ndarray:
    return render_chunk(*task)[0]


def class_name(label: int) -> str:
    return "covid" if label >= 2 else "normal"


def png_path(row: int, label: int) -> str:
    return f"{class_name(label)}/{row:07d}.png"


class ImageSet:
    """The PNGs of one side, the 64 px arrays and the lists under ``work/images-<side>``."""

    def __init__(self, work: Path, side: int):
        self.side = side
        self.folder = work / f"images-{side}"
        self.arrays = self.folder / "arrays"

    def marker(self) -> dict:
        marker = self.arrays / "done.json"
        return json.loads(marker.read_text()) if marker.is_file() else {}

    def ensure(self, images: int, workers: int) -> str:
        """At least ``images`` images there (whole chunks); returns what was done."""
        chunks = -(-images // CHUNK)
        made = self.marker()
        if made.get("version") == GENERATOR_VERSION and made.get("count", 0) >= chunks * CHUNK:
            return f"reused {made['count']:,} images in {self.folder}"
        if self.folder.exists() and made.get("version") != GENERATOR_VERSION:
            # Another generator's images (or an interrupted first run): all again, and no kept store of them.
            shutil.rmtree(self.folder)
            shutil.rmtree(self.folder.parent / f"stores-{self.side}", ignore_errors=True)
        for name in ("normal", "covid", "chunks", "arrays"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        missing = [index for index in range(chunks) if not (self.folder / "chunks" / f"{index:05d}.npz").is_file()]
        png_bytes = BYTES_PER_PNG_GUESS * (self.side / IMAGE_SIZE) ** 2
        need = len(missing) * CHUNK * png_bytes + chunks * CHUNK * (SYNTHETIC_SIZE**2 + 1)
        free = shutil.disk_usage(self.folder).free
        if need > 0.95 * free:
            raise SystemExit(f"{len(missing) * CHUNK:,} PNGs need about {need / 2**30:.0f} GB, {free / 2**30:.0f} GB "
                             f"free in {self.folder}: choose another --work-dir or smaller --sizes")
        started = time.monotonic()
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            tasks = [(index, str(self.folder), self.side) for index in missing]
            for done, _ in enumerate(pool.imap_unordered(make_chunk, tasks), 1):
                if done % 20 == 0 or done == len(missing):
                    print(f"  images: {done * CHUNK:,} of {len(missing) * CHUNK:,} written "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
        self._consolidate(chunks)
        return f"wrote {len(missing) * CHUNK:,} PNGs in {time.monotonic() - started:.0f} s ({workers} processes)"

    def _consolidate(self, chunks: int) -> None:
        """The 64 px images and the classes of all chunks as two .npy files (mapped by readers)."""
        count = chunks * CHUNK
        images = np.lib.format.open_memmap(self.arrays / "images64.tmp.npy", mode="w+", dtype=np.uint8,
                                           shape=(count, SYNTHETIC_SIZE, SYNTHETIC_SIZE))
        classes = np.empty(count, dtype=np.int8)
        for index in range(chunks):
            with np.load(self.folder / "chunks" / f"{index:05d}.npz") as chunk:
                images[index * CHUNK : (index + 1) * CHUNK] = chunk["images"]
                classes[index * CHUNK : (index + 1) * CHUNK] = chunk["classes"]
        images.flush()
        del images
        os.replace(self.arrays / "images64.tmp.npy", self.arrays / "images64.npy")
        np.save(self.arrays / "classes.npy", classes)
        (self.arrays / "done.json").write_text(json.dumps({"count": count, "version": GENERATOR_VERSION}))

    def classes(self, images: int) -> np.ndarray:
        return np.load(self.arrays / "classes.npy")[:images]

    def images64(self, images: int) -> np.ndarray:
        return np.load(self.arrays / "images64.npy", mmap_mode="r")[:images]

    def listing(self, images: int) -> Path:
        """``list-N.csv``: path, label, patient_id, source of the first N PNGs (covid-ddp-prepare's CSV)."""
        path = self.folder / f"list-{images}.csv"
        if not path.is_file():
            with open(path.with_suffix(".tmp"), "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "label", "patient_id", "source"])
                for row, label in enumerate(self.classes(images)):
                    writer.writerow([png_path(row, label), class_name(label), patient_id(row), "synthetic"])
            os.replace(path.with_suffix(".tmp"), path)
        return path

    def linked_folder(self, images: int) -> Path:
        """``sets/N/``: hard links to the first N PNGs (covid-ddp-predict takes folders, and the smaller
        sets are prefixes of one folder); no copy of the pixels."""
        folder = self.folder / "sets" / str(images)
        if (folder / ".complete").is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for row, label in enumerate(self.classes(images)):
            os.link(self.folder / png_path(row, label), folder / f"{row:07d}.png")
        (folder / ".complete").write_text("")
        return folder


def patient_id(row: int) -> str:
    return f"p{row // PATIENT_IMAGES:07d}"


def copy_groups(images: int) -> np.ndarray:
    """Each row's first copy, as covid-ddp-prepare writes meta.npz's duplicate_group for the planted pairs."""
    groups = np.arange(images, dtype=np.int64)
    for offset in (EXACT_COPY, NEAR_COPY):
        rows = np.arange(offset, images, CHUNK)
        groups[rows] = rows - 1
    return groups


def write_store_directly(image_set: ImageSet, images: int, folder: Path, workers: int) -> None:
    """A store of the first ``images`` images as covid-ddp-prepare writes it from their PNGs (the same
    pixels, rendered again: the PNGs are lossless), for the stages after a failed or skipped prepare."""
    import multiprocessing

    from covid_ddp.data.store import images_name

    side, classes = image_set.side, image_set.classes(images)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    staged = folder / (images_name(side, True) + ".tmp")
    store = np.lib.format.open_memmap(staged, mode="w+", dtype=np.uint8, shape=(images, side, side))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        tasks = [(index, side) for index in range(-(-images // CHUNK))]
        for index, chunk in enumerate(pool.imap(rendered, tasks)):
            start = index * CHUNK
            store[start : start + CHUNK] = chunk[: images - start]
    store.flush()
    del store
    os.replace(staged, folder / images_name(side, True))
    write_records(folder, classes)


def write_records(folder: Path, classes: np.ndarray) -> None:
    """train_labels.npz and meta.npz of the first len(classes) images, as covid-ddp-prepare writes them."""
    from covid_ddp.data.format import COPY_GROUP_KEY, LABELS_FILE, LABELS_KEY, META_FILE

    images = len(classes)
    indices = np.where(classes >= 2, 2, 0)
    np.savez_compressed(folder / LABELS_FILE, **{LABELS_KEY: np.eye(4, dtype=np.float32)[indices]})
    rows = np.arange(images)
    np.savez_compressed(folder / META_FILE, patient_id=np.array([patient_id(r) for r in rows]),
                        dataset=np.full(images, "synthetic"), path=np.array([png_path(r, c) for r, c in zip(rows, classes)]),
                        view=np.full(images, ""), label_name=np.array([class_name(c) for c in classes]),
                        **{COPY_GROUP_KEY: copy_groups(images)})


# --- the children: this script with --child STAGE ---------------------------------------------------


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_duplicates(spec: dict) -> None:
    from covid_ddp.data.duplicates import find_duplicates
    from covid_ddp.data.store import read_store

    started = time.perf_counter()
    images = read_store(Path(spec["store"]))
    pairs = find_duplicates(images)
    work = time.perf_counter() - started
    exact = sum(pair.exact for pair in pairs)
    print(f"find_duplicates: {len(images)} images, {len(pairs)} pairs ({exact} exact) in {work:.2f} s")
    emit({"work_s": work, "pairs": len(pairs), "exact": exact})


def child_split(spec: dict) -> None:
    """The trainer's split line (``split_groups``, then ``make_split``), default flags and --group-split."""
    from covid_ddp.data.format import COPY_GROUP_KEY, RawData, to_binary
    from covid_ddp.data.splits import make_split, split_groups
    from covid_ddp.training.config import parse_config

    images = spec["images"]
    image_set = ImageSet(Path(spec["work"]), spec["side"])
    classes = image_set.classes(images)
    labels = np.eye(4, dtype=np.float32)[np.where(classes >= 2, 2, 0)]
    meta = {"patient_id": np.array([patient_id(row) for row in range(images)]),
            "dataset": np.full(images, "synthetic"), COPY_GROUP_KEY: copy_groups(images)}
    data = RawData(image_set.images64(images), labels, {}, meta)  # the 64 px arrays, mapped: only copies are read
    plans = {"default": parse_config([]).split_plan(), "group_split": parse_config(["--group-split"]).split_plan()}
    # Untimed, a split of the first 300 rows: what the split imports (SciPy, ...) is imported before the clock.
    few = RawData(data.images[:300], labels[:300], {}, {key: values[:300] for key, values in meta.items()})
    for plan in plans.values():
        make_split(to_binary(few.labels), plan, few.meta, split_groups(few))
    parts, sizes = {}, {}
    started = time.perf_counter()
    targets = to_binary(data.labels)
    groups = split_groups(data)
    parts["split_groups"] = time.perf_counter() - started
    for name, plan in plans.items():
        begun = time.perf_counter()
        split = make_split(targets, plan, data.meta, groups)
        parts[name] = time.perf_counter() - begun
        sizes[name] = [len(split.train), len(split.val), len(split.test)]
    work = time.perf_counter() - started
    print(f"split of {images} labels: {parts}; train/val/test {sizes}")
    emit({"work_s": work, "parts": parts, "sizes": sizes})


class TimedLoader:
    """The training loader, unchanged, noting when each batch reaches the loop."""

    def __init__(self, loader):
        self.loader, self.stamps = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            self.stamps.append(time.time())
            yield batch


def child_train(spec: dict) -> None:
    """covid-ddp-train's start-up and first steps, through its own objects (``trainer.set_up_job``,
    ``preparation.prepare_run``, ``engine.train_one_epoch``), each start-up part timed where it is called."""
    import dataclasses
    from types import SimpleNamespace

    from covid_ddp.data import folders
    from covid_ddp.seeding import seed_global_generators
    from covid_ddp.training import preparation, trainer
    from covid_ddp.training.checkpoint import TrainingProgress
    from covid_ddp.training.config import parse_config
    from covid_ddp.training.engine import train_one_epoch
    from covid_ddp.training.interrupt import StopRequested
    from covid_ddp.training.session import Session

    stamps = {"imported": time.time()}
    timings: dict[str, float] = {}

    def timed(module, name: str, key: str) -> None:
        original = getattr(module, name, None)
        if original is None:  # the package moved it: that part is not timed apart
            return

        def wrapper(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - begun

        setattr(module, name, wrapper)

    timed(folders, "sha256_of", "sha256 of the files")
    timed(trainer, "load_training_data", "load (sha256 included)")
    timed(trainer, "split_groups", "copy groups")
    timed(trainer, "make_split", "split")
    timed(trainer, "refuse_blank_training", "blank check")
    timed(preparation, "pixel_statistics", "pixel statistics")
    timed(trainer, "new_model", "model (pixel statistics included)")
    steps = spec["steps"]
    config = parse_config(["--data-dir", spec["store"], "--batch-size", str(spec["batch_size"]),
                           "--workers", str(spec["workers"]), "--epochs", "1", "--log-every", str(steps),
                           "--log-with", "none", "--log-images-every", "0", "--audit", "no"])
    with Session.start(config) as session:
        stamps["session"] = time.time()
        job = trainer.set_up_job(session)
        stamps["set_up_job"] = time.time()
        accelerator = session.accelerator
        run = preparation.prepare_run(job.config, job.data, job.targets, job.split, accelerator, model=job.model)
        stamps["prepare_run"] = time.time()
        loader = TimedLoader(run.train_loader)
        steps = min(steps, len(loader))
        # A stop requested from the first step: the loop checks it every --log-every (= steps) steps and
        # stops after that step, as on SIGTERM, without saving anything (no run folder here).
        stopper = SimpleNamespace(signum=signal.SIGTERM)
        seed_global_generators(job.config.seed, "dropout", 1, accelerator.process_index)
        config = dataclasses.replace(job.config, log_every=steps)  # (fewer steps than asked: an epoch's)
        try:
            train_one_epoch(run.model, run.optimizer, loader, accelerator, config, 1, TrainingProgress(), stopper,
                            run.after_optimizer_step)
        except StopRequested:
            pass
        ended = time.time()
        placement = run.train_loader_kind
        del run
        session.shut_down()
    batch, marks = job.config.batch_size, loader.stamps
    warmup = min(spec["warmup"], steps - 1)
    steady = (steps - warmup) * batch / (ended - marks[warmup])
    first_step = (marks[1] if steps > 1 else ended) - marks[0]
    result = {"work_s": ended - marks[0], "first_batch": marks[0], "stamps": stamps, "timings": timings,
              "n_train": len(job.split.train), "steps_per_epoch": len(loader), "steps": steps, "warmup": warmup,
              "batch": batch, "first_step_s": first_step, "images_per_s": steady, "steps_per_s": steady / batch,
              "precision": job.config.mixed_precision, "placement": placement, "workers": job.config.workers}
    print(f"train: {steps} steps of {batch}, {steady:.1f} images/s after {warmup}; start-up parts {timings}")
    emit(result)


def child_predict_plain(spec: dict) -> None:
    """The plain loop: PIL open, grayscale, resize to the model's size, batches, forward pass, CSV."""
    import torch
    from PIL import Image

    from covid_ddp import load_model
    from covid_ddp.models.weights import decision_threshold

    weights = Path(spec["weights"])
    model = load_model(weights)
    size, batch_size = model.spec.image_size, spec["batch"]
    threshold = decision_threshold(None, weights)[0]
    files = sorted(Path(spec["folder"]).glob("*.png"))
    started = time.perf_counter()
    with open(spec["output"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "index", "p_covid", "prediction", "threshold"])

        def score(names: list[Path], pixels: list[np.ndarray]) -> None:
            with torch.inference_mode():
                p_covid = model(torch.from_numpy(np.stack(pixels)).unsqueeze(1).float())[:, 1].exp().numpy()
            for name, p in zip(names, p_covid):
                writer.writerow([str(name), 0, f"{p:.6f}", "COVID" if p >= threshold else "Non-COVID",
                                 f"{threshold:.6f}"])

        names, pixels = [], []
        for path in files:
            with Image.open(path) as image:
                gray = image.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.LANCZOS, reducing_gap=3.0)  # the filter covid_ddp resizes with
            names.append(path)
            pixels.append(np.asarray(gray))
            if len(pixels) == batch_size:
                score(names, pixels)
                names, pixels = [], []
        if pixels:
            score(names, pixels)
    work = time.perf_counter() - started
    print(f"plain loop: {len(files)} images in {work:.2f} s")
    emit({"work_s": work, "images": len(files)})


CHILDREN = {"duplicates": child_duplicates, "split": child_split, "train": child_train,
            "predict-plain": child_predict_plain}


# --- the stages, from the parent ----------------------------------------------------------------------


def command(name: str) -> list[str]:
    """A covid-ddp-* console script, or its launch/ script where it is not installed."""
    found = shutil.which(f"covid-ddp-{name}")
    return [found] if found else [sys.executable, str(ROOT / "launch" / f"{name}.py")]


def child_command(stage: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--spec", json.dumps(spec)]


class Bench:
    def __init__(self, settings):
        self.settings = settings
        self.work = settings.work_dir
        self.side = settings.image_size
        self.images = ImageSet(self.work, self.side)
        self.results: list[dict] = []
        self.weights: Path | None = None
        self.weights_error = ""
        self.written: dict[int, str] = {}  # size -> where its store came from, this run

    # what the stages read

    def store(self, images: int) -> Path:
        return self.work / f"stores-{self.side}" / str(images)

    def outputs(self, images: int) -> Path:
        return self.work / f"out-{self.side}" / str(images)

    def ensure_store(self, images: int, prepared: bool) -> tuple[Path, str]:
        """The store of ``images`` images: the prepare stage's, a kept one, or one written here."""
        from covid_ddp.data.store import images_name

        folder = self.store(images)
        if images in self.written:
            return folder, self.written[images]
        if (folder / images_name(self.side, True)).is_file() and (folder / "train_labels.npz").is_file():
            self.written[images] = "" if prepared else "store kept from an earlier run"
            return folder, self.written[images]
        need = images * self.side**2
        if need > 0.95 * shutil.disk_usage(self.work).free:
            raise RuntimeError(f"the store needs {need / 2**30:.1f} GB; not enough free disk in {self.work}")
        started = time.monotonic()
        write_store_directly(self.images, images, folder, self.settings.generate_workers)
        print(f"  (store of {images:,} images written directly in {time.monotonic() - started:.0f} s: prepare "
              f"{'failed' if 'prepare' in self.settings.stages else 'not run'})", flush=True)
        self.written[images] = "store written by this script (prepare failed or not run)"
        return folder, self.written[images]

    def arrays_folder(self, images: int) -> Path:
        """A data folder of the first ``images`` 64 px films (a store, labels, meta.npz): what evaluate and
        audit read, with Net at 64 px (at 224 px, Net scores 40-100 images/s here: hours at 400,000)."""
        from covid_ddp.data.image_rows import write_store

        folder = self.work / f"arrays-{SYNTHETIC_SIZE}" / str(images)
        if not (folder / "meta.npz").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_store(folder / f"train_images{SYNTHETIC_SIZE}.npy", self.images.images64(images))
            write_records(folder, self.images.classes(images))
        return folder

    def ensure_weights(self) -> Path | None:
        if self.weights or self.weights_error:
            return self.weights
        folder = self.work / "weights" / f"run-{SYNTHETIC_SIZE}"
        weights = folder / "COVID_binary_classifier.pth"
        if weights.is_file() and (folder / "COVID_binary_classifier.json").is_file():
            self.weights = weights
            return weights
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        done = subprocess.run([*command("train"), "--dataset", "synthetic", "--synthetic-size", "300",
                               "--image-size", str(SYNTHETIC_SIZE), "--epochs", "1", "--output-dir", str(folder),
                               "--log-with", "none", "--audit", "no", "--bootstrap", "0", "--log-images-every", "0"],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              check=False)
        if done.returncode or not weights.is_file():
            self.weights_error = f"no weights: the tiny training run failed: {(done.stderr or done.stdout)[-500:]}"
            return None
        print(f"  (weights: a tiny run at {SYNTHETIC_SIZE} px, {time.monotonic() - started:.0f} s: {weights})", flush=True)
        self.weights = weights
        return weights

    # the table's rows

    def record(self, stage: str, images: int, measured: dict | None = None, error: str = "", note: str = "",
               work_s: float | None = None, rate: float | None = None, extra: dict | None = None,
               skipped: bool = False) -> dict:
        measured = measured or {}
        ok = not error and measured.get("returncode", 1) == 0 and not measured.get("killed")
        if measured and not ok and not error:
            error = measured.get("killed") or f"exit {measured.get('returncode')}: " + _last_line(measured["tail"])
        child = measured.get("child") or {}
        work = work_s if work_s is not None else child.get("work_s")
        seconds = work if work is not None else measured.get("wall_s")
        row = {"stage": stage, "images": images, "ok": ok, "skipped": skipped, "error": error, "note": note,
               "wall_s": measured.get("wall_s"), "work_s": work,
               "images_per_s": rate if rate is not None else (images / seconds if ok and seconds else None),
               "peak_pss_mib": measured.get("peak_pss_mib"), "peak_anon_mib": measured.get("peak_anon_mib"),
               "ru_maxrss_mib": measured.get("ru_maxrss_mib"), "processes": measured.get("processes"),
               "log": measured.get("log"), "package": package_state(), "child": child, **(extra or {})}
        self.results.append(row)
        print(f"  {stage:<20} {images:>9,}  " + (f"{row['wall_s']:8.1f} s  {row['peak_pss_mib'] or 0:8.0f} MiB PSS"
                                                  if row["wall_s"] is not None else "") +
              ("" if ok else f"  {'SKIPPED' if skipped else 'FAILED'}: {error[:300]}"), flush=True)
        return row

    # the stages

    def run_size(self, images: int) -> None:
        settings = self.settings
        out = self.outputs(images)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        prepared = False
        store_note, store_error = "", ""
        for stage in settings.stages:
            try:
                if stage == "prepare":
                    prepared = self.stage_prepare(images, out)
                    continue
                if stage == "predict":
                    self.stage_predict(images, out)
                    continue
                if stage == "split":
                    spec = {"images": images, "work": str(self.work), "side": self.side}
                    measured = measure(child_command("split", spec), settings, out / "split.log")
                    self.record("split", images, measured, extra={"parts": (measured["child"] or {}).get("parts")})
                    continue
                if store_error:
                    self.record(stage, images, error=store_error)
                    continue
                try:
                    store, store_note = self.ensure_store(images, prepared)
                except Exception as error:  # noqa: BLE001  (disk): every stage on the store says so
                    store_error = f"no store: {error}"
                    self.record(stage, images, error=store_error)
                    continue
                getattr(self, f"stage_{stage}")(images, store, out, store_note)
            except Exception as error:  # noqa: BLE001  (this script's own failure: a row, and on)
                self.record(stage, images, error=f"benchmark error: {type(error).__name__}: {error}")
        if not settings.keep:
            shutil.rmtree(self.store(images), ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)

    def stage_prepare(self, images: int, out: Path) -> bool:
        listing = self.images.listing(images)
        store = self.store(images)
        shutil.rmtree(store, ignore_errors=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        need = images * self.side**2
        if need > 0.95 * shutil.disk_usage(self.work).free:
            self.record("prepare", images, error=f"the store needs {need / 2**30:.1f} GB: not enough free disk")
            return False
        measured = measure([*command("prepare"), "--output-dir", str(store), str(listing), "--image-size",
                            str(self.side), "--format", "store"], self.settings, out / "prepare.log")
        record = store / "prepare.json"
        parts, note = {}, ""
        if measured["returncode"] == 0 and record.is_file():
            report = json.loads(record.read_text())
            parts = {"decode": report.get("decode_seconds")}
            parts["after decoding (duplicates, writing)"] = measured["wall_s"] - (parts["decode"] or 0)
            note = f"{len(report.get('duplicates', []))} duplicate pairs, {report.get('workers')} decoding workers"
        row = self.record("prepare", images, measured, note=note, extra={"parts": parts})
        if not row["ok"]:
            shutil.rmtree(store, ignore_errors=True)
        return row["ok"]

    def stage_duplicates(self, images: int, store: Path, out: Path, store_note: str) -> None:
        from covid_ddp.data.store import images_name

        measured = measure(child_command("duplicates", {"store": str(store / images_name(self.side, True))}),
                           self.settings, out / "duplicates.log")
        child = measured["child"] or {}
        expected = 2 * (images // CHUNK) + (images % CHUNK > EXACT_COPY) + (images % CHUNK > NEAR_COPY)
        note = f"{child.get('pairs')} pairs ({child.get('exact')} exact; {expected} planted)" if child else ""
        self.record("duplicates", images, measured, note=_joined(note, store_note))

    def stage_train(self, images: int, store: Path, out: Path, store_note: str) -> None:
        settings = self.settings
        spec = {"store": str(store), "steps": settings.train_steps, "warmup": settings.train_warmup,
                "batch_size": settings.batch_size, "workers": settings.train_workers}
        measured = measure(child_command("train", spec), settings, out / "train.log")
        child = measured["child"] or {}
        extra = {}
        if child:
            startup = child["first_batch"] - measured["spawned"]
            epoch = startup + child["n_train"] / child["images_per_s"]
            extra = {"startup_s": startup, "first_step_s": child["first_step_s"], "steps_per_s": child["steps_per_s"],
                     "epoch_extrapolated_s": epoch, "n_train": child["n_train"], "parts": child["timings"]}
        note = (f"{child['steps']} steps of {child['batch']} ({child['precision']}, {child['workers']} workers); "
                f"epoch extrapolated {extra['epoch_extrapolated_s']:.0f} s" if child else "")
        self.record("train", images, measured, note=_joined(note, store_note),
                    rate=child.get("images_per_s"), extra=extra)

    def stage_evaluate(self, images: int, store: Path, out: Path, store_note: str) -> None:
        weights = self.ensure_weights()
        if weights is None:
            self.record("evaluate", images, error=self.weights_error)
            return
        bootstrap = self.settings.eval_bootstrap
        measured = measure([*command("evaluate"), "--weights", str(weights), "--data-dir", str(self.arrays_folder(images)),
                            "--split", "all",
                            "--bootstrap", str(bootstrap), "--output-dir", str(out / "evaluation")],
                           self.settings, out / "evaluate.log")
        self.record("evaluate", images, measured, note=f"{SYNTHETIC_SIZE} px store, --split all --bootstrap {bootstrap}")

    def stage_audit(self, images: int, store: Path, out: Path, store_note: str) -> None:
        weights = self.ensure_weights()
        if weights is None:
            self.record("audit", images, error=self.weights_error)
            return
        measured = measure([*command("audit"), "--weights", str(weights), "--data-dir", str(self.arrays_folder(images)),
                            "--split", "all", "--output-dir", str(out / "audit")], self.settings, out / "audit.log")
        self.record("audit", images, measured, note=f"{SYNTHETIC_SIZE} px store, --split all")

    def stage_predict(self, images: int, out: Path) -> None:
        if images > self.settings.predict_max:
            for stage in ("predict", "predict (plain loop)"):
                self.record(stage, images, error=f"not run: over --predict-max {self.settings.predict_max:,} files",
                            skipped=True)
            return
        weights = self.ensure_weights()
        if weights is None:
            for stage in ("predict", "predict (plain loop)"):
                self.record(stage, images, error=self.weights_error)
            return
        folder = self.images.linked_folder(images)
        command_csv, plain_csv = out / "predict.csv", out / "plain.csv"
        measured = measure([*command("predict"), "--weights", str(weights), str(folder), "--output", str(command_csv)],
                           self.settings, out / "predict.log")
        command_row = self.record("predict", images, measured, note="covid-ddp-predict, default flags")
        plain = measure(child_command("predict-plain", {"weights": str(weights), "folder": str(folder),
                                                        "output": str(plain_csv), "batch": self.settings.predict_batch}),
                        self.settings, out / "predict-plain.log")
        note = f"PIL (LANCZOS resize), batches of {self.settings.predict_batch}, fp32"
        if command_row["ok"] and plain["returncode"] == 0:
            difference = _largest_difference(command_csv, plain_csv)
            if difference is not None:
                note += f"; max |p_covid difference| vs covid-ddp-predict {difference:.1e}"
        # Timed alike: both rows' images/s are over the whole process (wall seconds).
        self.record("predict (plain loop)", images, plain, note=note,
                    rate=images / plain["wall_s"] if plain["returncode"] == 0 and not plain["killed"] else None)


def _largest_difference(first: Path, second: Path) -> float | None:
    def read(path: Path) -> dict[str, float]:
        with open(path, newline="") as handle:
            return {Path(row["source"]).name: float(row["p_covid"]) for row in csv.DictReader(handle)}

    try:
        a, b = read(first), read(second)
    except (OSError, KeyError, ValueError):
        return None
    shared = a.keys() & b.keys()
    return max((abs(a[key] - b[key]) for key in shared), default=None) if len(shared) == len(a) == len(b) else None


def _joined(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-400:] if lines else "(no output)"


# --- the report ------------------------------------------------------------------------------------------


def exponent(a: float | None, b: float | None, n1: int, n2: int) -> float | None:
    if not a or not b or a <= 0 or b <= 0 or n1 == n2:
        return None
    return math.log(b / a) / math.log(n2 / n1)


def growth(results: list[dict]) -> list[dict]:
    rows = []
    stages = list(dict.fromkeys(row["stage"] for row in results))
    for stage in stages:
        done = sorted((row for row in results if row["stage"] == stage and row["ok"]), key=lambda row: row["images"])
        for first, second in itertools.pairwise(done):
            n1, n2 = first["images"], second["images"]
            # train's own work is a fixed number of steps: its growth is that of its start-up (and, in a row
            # of its own, of the extrapolated epoch).
            key = "startup_s" if stage == "train" else "work_s"
            work1 = first[key] if first[key] is not None else first["wall_s"]
            work2 = second[key] if second[key] is not None else second["wall_s"]
            entry = {"stage": "train (start-up)" if stage == "train" else stage, "from": n1, "to": n2,
                     "time_exponent_wall": exponent(first["wall_s"], second["wall_s"], n1, n2),
                     "time_exponent_work": exponent(first[key], second[key], n1, n2)
                     if first[key] is not None and second[key] is not None else None,
                     "memory_exponent_pss": exponent(first["peak_pss_mib"], second["peak_pss_mib"], n1, n2),
                     "memory_exponent_anon": exponent(first["peak_anon_mib"], second["peak_anon_mib"], n1, n2),
                     "marginal_ms_per_image": 1000 * (work2 - work1) / (n2 - n1),
                     "marginal_pss_kib_per_image": (second["peak_pss_mib"] - first["peak_pss_mib"]) * 1024 / (n2 - n1),
                     "marginal_anon_kib_per_image": (second["peak_anon_mib"] - first["peak_anon_mib"]) * 1024 / (n2 - n1)}
            rows.append(entry)
            if stage == "train":
                epoch1, epoch2 = first["epoch_extrapolated_s"], second["epoch_extrapolated_s"]
                rows.append({"stage": "train (epoch, extrapolated)", "from": n1, "to": n2, "time_exponent_wall": None,
                             "time_exponent_work": exponent(epoch1, epoch2, n1, n2), "memory_exponent_pss": None,
                             "memory_exponent_anon": None, "marginal_ms_per_image": 1000 * (epoch2 - epoch1) / (n2 - n1),
                             "marginal_pss_kib_per_image": None, "marginal_anon_kib_per_image": None})
    return rows


def _cell(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def report(results: list[dict], grown: list[dict], about: dict, settings) -> None:
    print(f"\nmachine: {about['cpu']}, {about['cores']} cores, {about['memory_gib']} GiB; torch {about['torch']}, "
          f"Python {about['python']}; commit {about['commit']}"
          + (f" with {about['package_changed_files']} changed file(s) in covid_ddp/ (working tree)"
             if about["package_changed_files"] else ""))
    print(f"images at {settings.image_size}x{settings.image_size}; seconds: wall-clock of the stage's fresh process (start to exit); work s: the "
          "stage's own timing of its call (no imports, no start-up; train: its timed steps); images/s: images over "
          "work s, else wall s (train: steady training images/s; predict: over wall s, both rows); peak PSS: summed "
          f"over the stage's processes, sampled every {settings.sample_every} s; anon: of it, anonymous + shared "
          "memory (not mapped files); ru_maxrss: the stage process's own")
    states = list(dict.fromkeys(row["package"] for row in results))
    if len(states) > 1:
        print(f"warning: the package changed during the run ({' -> '.join(states)}): each row's 'package' in the "
              "JSON names the one it ran; compare rows of one state")
    print("\n| stage | images | seconds | work s | images/s | peak PSS MiB | anon MiB | ru_maxrss MiB | processes | note |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results:
        if row["ok"]:
            print(f"| {row['stage']} | {row['images']:,} | {_cell(row['wall_s'])} | {_cell(row['work_s'], 2)} | "
                  f"{_cell(row['images_per_s'], 0)} | {_cell(row['peak_pss_mib'], 0)} | {_cell(row['peak_anon_mib'], 0)} | "
                  f"{_cell(row['ru_maxrss_mib'], 0)} | {_cell(row['processes'])} | {row['note']} |")
        else:
            seconds = f"{_cell(row['wall_s'])} (lower bound)" if row["wall_s"] is not None and "killed" in row["error"] \
                else _cell(row["wall_s"])
            print(f"| {row['stage']} | {row['images']:,} | {seconds} | - | - | {_cell(row['peak_pss_mib'], 0)} | "
                  f"{_cell(row['peak_anon_mib'], 0)} | {_cell(row['ru_maxrss_mib'], 0)} | {_cell(row['processes'])} | "
                  f"{'SKIPPED' if row['skipped'] else 'FAILED'}: "
                  f"{_joined(row['error'][:300], row['note']).replace('|', '/')} |")
    if grown:
        print("\ngrowth between consecutive sizes: exponent log(x2/x1)/log(n2/n1) (1.0 linear, 0 constant, 2 quadratic); "
              "marginal: (x2 - x1)/(n2 - n1), of work s where the stage has it, else wall s; train: its 'work' is its "
              "start-up (its timed steps are a fixed count), and the extrapolated epoch has a row of its own")
        print("| stage | images | time exp. (wall) | time exp. (work) | memory exp. (PSS) | memory exp. (anon) | "
              "marginal ms/image | marginal PSS KiB/image | marginal anon KiB/image |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for entry in grown:
            print(f"| {entry['stage']} | {entry['from']:,} -> {entry['to']:,} | {_cell(entry['time_exponent_wall'], 2)} | "
                  f"{_cell(entry['time_exponent_work'], 2)} | {_cell(entry['memory_exponent_pss'], 2)} | "
                  f"{_cell(entry['memory_exponent_anon'], 2)} | {_cell(entry['marginal_ms_per_image'], 3)} | "
                  f"{_cell(entry['marginal_pss_kib_per_image'], 1)} | {_cell(entry['marginal_anon_kib_per_image'], 1)} |")
    trained = [row for row in results if row["stage"] == "train" and row["ok"]]
    if trained:
        names = list(dict.fromkeys(name for row in trained for name in row["parts"]))
        print(f"\ntrain: covid-ddp-train's start-up and {trained[0]['child']['steps']} steps of "
              f"{trained[0]['child']['batch']} ({trained[0]['child']['precision']}, "
              f"{trained[0]['child']['workers']} DataLoader workers, placement {trained[0]['child']['placement']}); "
              "the epoch is EXTRAPOLATED: start-up + N_train / images/s (training steps only, no validation or test)")
        print("| images | N_train | start-up s | first step s | steps/s | images/s | epoch s (extrapolated) | "
              + " | ".join(f"{name} s" for name in names) + " |")
        print("| ---: " * (7 + len(names)) + "|")
        for row in trained:
            print(f"| {row['images']:,} | {row['n_train']:,} | {row['startup_s']:.1f} | {row['first_step_s']:.2f} | "
                  f"{row['steps_per_s']:.2f} | {row['images_per_s']:.0f} | {row['epoch_extrapolated_s']:,.0f} | "
                  + " | ".join(_cell(row["parts"].get(name), 2) for name in names) + " |")
    splits = [row for row in results if row["stage"] == "split" and row["ok"] and row.get("parts")]
    if splits:
        print("\nsplit (the trainer's calls, seconds): split_groups, then make_split of the default flags and of "
              "--group-split (patient ids; 3 images a patient; planted copies kept together)")
        print("| images | split_groups s | default s | --group-split s |\n| ---: | ---: | ---: | ---: |")
        for row in splits:
            parts = row["parts"]
            print(f"| {row['images']:,} | {parts['split_groups']:.3f} | {parts['default']:.3f} | {parts['group_split']:.3f} |")
    for stage in ("prepare",):
        rows = [row for row in results if row["stage"] == stage and row["ok"] and row.get("parts")]
        if rows:
            print("\nprepare (from its prepare.json): decoding vs the rest (find_duplicates, stacking, writing the store)")
            print("| images | decode s | the rest s |\n| ---: | ---: | ---: |")
            for row in rows:
                rest = row["parts"]["after decoding (duplicates, writing)"]
                print(f"| {row['images']:,} | {_cell(row['parts']['decode'], 1)} | {_cell(rest, 1)} |")
    predicted = {(row["stage"], row["images"]): row for row in results if row["stage"].startswith("predict")}
    pairs = [(images, predicted[("predict", images)], predicted.get(("predict (plain loop)", images)))
             for (stage, images) in predicted if stage == "predict"]
    if pairs:
        print("\npredict: images/s over the whole process (wall), covid-ddp-predict vs the plain batched loop")
        print("| images | covid-ddp-predict images/s | plain loop images/s | plain / command |\n| ---: | ---: | ---: | ---: |")
        for images, command_row, plain_row in pairs:
            a = command_row["images_per_s"] if command_row["ok"] else None
            b = plain_row["images_per_s"] if plain_row and plain_row["ok"] else None
            print(f"| {images:,} | {_cell(a, 0)} | {_cell(b, 0)} | {_cell(b / a if a and b else None, 2)} |")


# --- main -------------------------------------------------------------------------------------------------


def hold_work_dir(work: Path):
    """An exclusive lock on ``work``: two runs in one work dir would delete each other's stores and
    outputs (and share the cores: neither's figures would hold)."""
    handle = open(work / ".lock", "a+")  # noqa: SIM115  (open for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise SystemExit(f"{work} is in use by another scale.py run ({holder}); wait for it, or give another "
                         "--work-dir (and expect the figures of two runs at once to be slower)")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    return handle


def sizes_of(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated image counts, got {text!r}")
    if not sizes or sizes[0] < 100:
        raise argparse.ArgumentTypeError("--sizes: each size must be 100 images or more")
    return sizes


def stages_of(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in STAGES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--stages: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(STAGES)}")
    return [name for name in STAGES if name in chosen]  # always in pipeline order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=sizes_of, default=None, metavar="N,N,...",
                        help="image counts, each a prefix of the largest set (default: 10000,100000,400000)")
    parser.add_argument("--stages", type=stages_of, default=list(STAGES), metavar="STAGE,...",
                        help=f"the stages to run, in pipeline order whatever the order given (default: all: {','.join(STAGES)})")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"every stage at tiny sizes ({','.join(map(str, DRY_SIZES))}) of {DRY_IMAGE_SIZE} px images, "
                             "4 training steps of 16 images, --eval-bootstrap 10 (each unless given): checks the script "
                             "end to end (CI), measures nothing worth keeping")
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help=f"side of the PNGs, the store (covid-ddp-prepare --image-size) and the weights' Net "
                             f"(default: {IMAGE_SIZE}; --dry-run: {DRY_IMAGE_SIZE})")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "covid_ddp_scale",
                        help="where the PNGs, 64 px arrays, lists, stores, weights and stage outputs go; the images and "
                             "weights are kept there and reused by later runs (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each size's store and stage outputs (CSV, evaluation, audit, logs) under "
                             "WORK/stores-S and WORK/out-S (default: deleted once the size's stages are done)")
    parser.add_argument("--remove-images", action="store_true",
                        help="delete WORK/images-S (PNGs, arrays, lists, links) at the end (default: kept for reruns)")
    parser.add_argument("--train-steps", type=int, default=None, metavar="K",
                        help="training steps timed by the train stage (default: 30; --dry-run: 4)")
    parser.add_argument("--train-warmup", type=int, default=2, metavar="W",
                        help="of those, the first steps left out of steps/s (allocations, kernel choices; default: 2)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="covid-ddp-train --batch-size of the train stage (default: 100, the recipe's; --dry-run: 16)")
    parser.add_argument("--train-workers", type=int, default=0, metavar="N",
                        help="covid-ddp-train --workers of the train stage: DataLoader workers gathering batches from "
                             "the mapped store (default: 0, the command's default: the training process gathers them)")
    parser.add_argument("--eval-bootstrap", type=int, default=None, metavar="N",
                        help="covid-ddp-evaluate --bootstrap (default: the command's 1000, which does not dominate at "
                             "224 px: 3 s of 10,000 images' metrics, 34 s of 100,000, against minutes of scoring; "
                             "--dry-run: 10)")
    parser.add_argument("--predict-max", type=int, default=100_000, metavar="N",
                        help="the predict stage runs up to this many files (default: %(default)s)")
    parser.add_argument("--predict-batch", type=int, default=100, metavar="B",
                        help="images per forward pass of the plain predict loop (default: 100)")
    parser.add_argument("--generate-workers", type=int, default=None, metavar="N",
                        help="processes writing the PNGs (default: every core)")
    parser.add_argument("--sample-every", type=float, default=0.2, metavar="S",
                        help="seconds between memory samples of a stage's processes (default: 0.2)")
    parser.add_argument("--memory-cap-gib", type=float, default=None, metavar="GIB",
                        help="kill a stage whose summed anonymous PSS passes this, reporting it (default: 90%% of the "
                             "memory available at the start; 0: no cap)")
    parser.add_argument("--stage-timeout", type=float, default=4 * 3600, metavar="S",
                        help="kill a stage running longer than this, reporting it (default: 14400 s; 0: none)")
    parser.add_argument("--output", type=Path, metavar="FILE.json",
                        help="write every figure (settings, machine, each stage's row, growth) as JSON")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)  # a measured stage process
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    settings = parser.parse_args(argv)
    if settings.child:
        CHILDREN[settings.child](json.loads(settings.spec))
        return 0
    settings.sizes = settings.sizes or list(DRY_SIZES if settings.dry_run else DEFAULT_SIZES)
    small = settings.dry_run
    settings.image_size = settings.image_size or (DRY_IMAGE_SIZE if small else IMAGE_SIZE)
    if settings.image_size < SYNTHETIC_SIZE:
        parser.error(f"--image-size: {SYNTHETIC_SIZE} px or more (the generator's films are upscaled)")
    settings.train_steps = settings.train_steps or (4 if small else 30)
    settings.batch_size = settings.batch_size or (16 if small else 100)
    settings.eval_bootstrap = settings.eval_bootstrap if settings.eval_bootstrap is not None else (10 if small else 1000)
    if settings.memory_cap_gib is None:
        settings.memory_cap_gib = 0.9 * meminfo_kib("MemAvailable") / 2**20
    settings.generate_workers = settings.generate_workers or len(os.sched_getaffinity(0))
    settings.work_dir = settings.work_dir.resolve()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_work_dir(settings.work_dir)  # noqa: F841  (held until this process exits)
    about = machine()
    print(f"covid_ddp scale benchmark: sizes {', '.join(f'{n:,}' for n in settings.sizes)}; stages "
          f"{', '.join(settings.stages)}; work dir {settings.work_dir}; memory cap {settings.memory_cap_gib:.1f} GiB "
          f"(anonymous PSS); stage timeout {settings.stage_timeout:.0f} s", flush=True)
    started = time.monotonic()
    bench = Bench(settings)
    print("  " + bench.images.ensure(max(settings.sizes), settings.generate_workers), flush=True)
    for images in settings.sizes:
        print(f"{images:,} images:", flush=True)
        bench.run_size(images)
    grown = growth(bench.results)
    report(bench.results, grown, about, settings)
    total = time.monotonic() - started
    print(f"\nwhole benchmark: {total:.0f} s")
    if settings.output:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        kept = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(settings).items()
                if key not in ("child", "spec")}
        settings.output.write_text(json.dumps({"machine": about, "settings": kept, 
                                               "results": bench.results, "growth": grown, "seconds": total},
                                              indent=1, default=float))
        print(f"wrote {settings.output}")
    if settings.remove_images:
        shutil.rmtree(bench.images.folder, ignore_errors=True)
    failed = [f"{row['stage']} at {row['images']:,}" for row in bench.results if not row["ok"] and not row["skipped"]]
    if failed:  # the table holds every figure; the exit status says whether every stage ran (CI's dry run)
        print(f"{len(failed)} stage(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
