"""covid-ddp-prepare's speed: decoding files of a realistic size, and the duplicate search.

    python benchmarks/prepare.py                    # 400 files of each kind, 1 and all workers
    python benchmarks/prepare.py --files 2000 --duplicates 20000

Writes synthetic radiographs (random smooth images) in the sizes hospital exports and public
sets use: PNG 1024x1024 8-bit, JPEG 2048x2048, DICOM 2048x2048 12-bit uncompressed. Times the
whole command per kind (process pool start-up included), then ``find_duplicates`` alone on
``--duplicates`` random 64x64 images (it grows with the square of the count). Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from covid_ddp.data.duplicates import find_duplicates  # noqa: E402
from covid_ddp.data.prepare import PrepareOptions, collect_items, parse_label_map, prepare  # noqa: E402

KINDS = {"png 1024x1024 8-bit": (".png", 1024), "jpeg 2048x2048": (".jpg", 2048),
         "dicom 2048x2048 12-bit": (".dcm", 2048)}


def smooth_picture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.random((16, 16))
    return np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))


def write_files(folder: Path, suffix: str, size: int, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        label = ("normal", "covid")[index % 2]
        path = folder / label / f"{index}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = smooth_picture(rng, size)
        if suffix == ".dcm":
            from dicom_files import write_dicom

            write_dicom(path, picture.astype(np.uint16) * 16, WindowCenter=2048, WindowWidth=4096)
        else:
            Image.fromarray(picture).save(path, **({"quality": 90} if suffix == ".jpg" else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=400, help="files of each kind")
    parser.add_argument("--duplicates", type=int, default=10000, help="images for the duplicate-search timing")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{args.files} files of each kind; {cores} cores; decode only (find_duplicates timed apart)")
    print(f"{'kind':<26}{'workers':>8}{'images/s':>10}{'100,000 images':>16}")
    for kind, (suffix, size) in KINDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            write_files(Path(tmp), suffix, size, args.files)
            items = collect_items([tmp])
            for workers in sorted({1, cores}):
                started = time.perf_counter()
                prepare(items, parse_label_map(None), Path(tmp) / f"out-{workers}",
                        PrepareOptions(workers, progress=False))
                rate = args.files / (time.perf_counter() - started)
                print(f"{kind:<26}{workers:>8}{rate:>10.0f}{100000 / rate / 60:>13.1f} min")
    images = np.random.default_rng(1).integers(0, 256, (args.duplicates, 64, 64), dtype=np.uint8)
    started = time.perf_counter()
    find_duplicates(images)
    seconds = time.perf_counter() - started
    print(f"find_duplicates on {args.duplicates} images: {seconds:.1f} s (how it grows: benchmarks/scale.py)")


if __name__ == "__main__":
    main()
