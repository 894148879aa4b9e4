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
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .format import IMAGES_FILE, IMAGES_KEY, LABELS_FILE, MIN_IMAGE_SIZE, hash_record

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


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, refusing pickled objects; errors name the file (and the array)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):  # else numpy would try to read it as a pickle
        raise UserError(f"{path}: not a readable .npz file (not a zip archive: truncated, corrupted or another format)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: _read_array(archive, key, path) for key in archive.files}
    except UserError:
        raise
    except Exception as error:  # zipfile.BadZipFile, EOFError, OSError, ...: a damaged file.
        raise UserError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})")


def _read_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UserError(f"{path}: '{key}' is an object array; pickled data is refused, save it as a numeric array")
        raise UserError(f"{path}: not a readable .npz file ({error})")


def load_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of an ``.npz`` file (see ``read_npz``)."""
    arrays = read_npz(path)
    if key not in arrays:
        raise UserError(f"{path}: no array named '{key}' (found: {', '.join(arrays) or 'none'})")
    return arrays[key]


def validate_images(images: np.ndarray, path: Path, image_size: int | None = None) -> None:
    """uint8 (N, S, S) with S = ``image_size`` when given (an images file's name says its size)."""
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] < MIN_IMAGE_SIZE:
        raise UserError(f"{path}: images must have shape (N, S, S), square and {MIN_IMAGE_SIZE} px or more, "
                        f"got {images.shape}")
    if image_size is not None and images.shape[1] != image_size:
        raise UserError(f"{path}: its name says {image_size}x{image_size} but it holds {images.shape[1]}x"
                        f"{images.shape[2]} images; rename it train_images{images.shape[1]}{Path(path).suffix}")
    if images.dtype != np.uint8:
        non_finite = np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all()
        problem = f"{images.dtype} with NaN or inf values" if non_finite else str(images.dtype)
        raise UserError(f"{path}: images must be uint8 (0-255), got {problem}")
    if images.shape[0] == 0:
        raise UserError(f"{path}: the file holds no images")


def validate_labels(labels: np.ndarray, path: Path) -> None:
    if labels.ndim != 2 or labels.shape[1] != 4:
        raise UserError(f"{path}: labels must have shape (N, 4) (one-hot over 4 classes), got {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise UserError(f"{path}: labels must be numeric, got {labels.dtype}")
    if labels.shape[0] == 0:
        raise UserError(f"{path}: the file holds no labels")
    binary_values = np.isin(labels, (0, 1)).all(axis=1)
    bad_rows = np.flatnonzero(~binary_values | (labels.sum(axis=1) != 1))
    if bad_rows.size:
        raise UserError(
            f"{path}: {bad_rows.size} label rows are not one-hot (exactly one 1, the rest 0); first bad row: {bad_rows[0]}"
        )


def refuse_a_folder_of_other_files(folder: Path) -> None:
    """A --data-dir without the two files but with others (a folder of PNGs, say) is a mistake to
    name, not a cache to download MCFAM into: only a new, empty or MCFAM-only folder is one."""
    if not folder.is_dir():
        return
    ours = {IMAGES_FILE, LABELS_FILE, *(hash_record(Path(name)).name for name in (IMAGES_FILE, LABELS_FILE))}
    others = sorted(p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith("."))
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(f"{folder} holds no {IMAGES_FILE} and {LABELS_FILE} but {len(others)} other file(s) ({listed}); "
                        "--data-dir takes a folder with those two files (covid-ddp-prepare --output-dir DIR SRC makes one "
                        "from PNG/JPEG/DICOM images), and --download fills only a new or empty folder with MCFAM")
