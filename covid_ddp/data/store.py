"""A data folder's images file, at any size: compressed ``.npz`` or the memory-mapped store ``.npy``.

    train_images64.npz    MCFAM's own name and format: compressed, read whole into each process
    train_images224.npy   the store: uncompressed, mapped read-only (``np.load(mmap_mode="r")``)

The size is in the name (``train_images{S}``), as MCFAM's 64 is. A store is what
``covid-ddp-prepare`` writes for large sets (``--format``): every process of a node that maps it
reads the same pages of the operating system's page cache, so the set is held once per machine
instead of once per process (8 processes x 5 GB at 224 px is 40 GB otherwise;
``benchmarks/memory.py`` measures it). Batches are gathered from the mapping by row, by the
training process or by DataLoader workers (``--workers``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_path
from .format import IMAGES_KEY

_IMAGES_NAME = re.compile(r"^train_images(\d+)\.(npz|npy)$")
STORE_SUFFIX, ARCHIVE_SUFFIX = ".npy", ".npz"


def images_name(image_size: int, store: bool = False) -> str:
    """``train_images64.npz``, ``train_images224.npy``."""
    return f"{IMAGES_KEY}{image_size}{STORE_SUFFIX if store else ARCHIVE_SUFFIX}"


def images_files(folder: Path) -> dict[int, Path]:
    """Image size -> the folder's images file of that size (the store where both formats are there)."""
    found: dict[int, Path] = {}
    for path in sorted(Path(folder).glob(f"{IMAGES_KEY}*")):
        match = _IMAGES_NAME.match(path.name)
        if match and path.is_file() and (int(match.group(1)) not in found or match.group(2) == "npy"):
            found[int(match.group(1))] = path
    return found


def find_images_file(folder: Path, image_size: int | None = None) -> Path | None:
    """The images file to read: the one of ``image_size``, or the only one there (None: none at all).
    A folder holding several sizes needs ``--image-size`` to choose."""
    found = images_files(folder)
    if image_size is not None:
        if image_size in found:
            return found[image_size]
        if found:
            raise UserError(f"{folder} holds no {image_size}x{image_size} images (it holds "
                            f"{', '.join(p.name for p in found.values())}); prepare them at that size with "
                            f"covid-ddp-prepare --image-size {image_size}")
        return None
    if len(found) > 1:
        raise UserError(f"{folder} holds images of several sizes ({', '.join(p.name for p in found.values())}); "
                        f"choose one with --image-size")
    return next(iter(found.values()), None)


def image_size_of(path: Path) -> int:
    return int(_IMAGES_NAME.match(Path(path).name).group(1))


def read_store(path: Path) -> np.ndarray:
    """The store's images, mapped read-only: nothing is read until rows are indexed."""
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:  # an object array, a damaged header, an empty file
        raise UserError(f"{path}: not a readable image store ({type(error).__name__}: {error or 'empty'}); write it "
                        "again with covid-ddp-prepare --format store") from None
    if not isinstance(images, np.ndarray):  # an .npz archive renamed .npy: np.load opened it as one
        images.close()
        raise UserError(f"{path}: an .npz archive named like a store; name it {path.with_suffix('.npz').name}")
    return images


def write_store(path: Path, images: np.ndarray, chunk: int = 4096) -> Path:
    """Write ``images`` (N, S, S) uint8 as a store, in chunks (an input that is itself mapped is
    never read whole); atomically, so a stopped write leaves no store behind."""
    with atomic_path(Path(path)) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=images.shape)
        for start in range(0, len(images), chunk):
            out[start : start + chunk] = images[start : start + chunk]
        out.flush()
        del out
    return Path(path)
