"""The MCFAM format: ``train_images<S>.npz`` (key ``train_images``, ``(N, S, S) uint8``) and
``train_labels.npz`` (key ``train_labels``, ``(N, 4)`` one-hot; indices 0 and 1 are non-COVID, 2 and 3
COVID), their names and checks, and ``.npz`` files read without pickles.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..bounds import MIN_IMAGE_SIZE
from ..errors import UserError

IMAGES_KEY = "train_images"  # the array's key; its file is train_images<S>.npz (or the store's .npy)
IMAGES_FILE = f"{IMAGES_KEY}64.npz"  # MCFAM's images file
LABELS_FILE, LABELS_KEY = "train_labels.npz", "train_labels"
PREPARE_RECORD = "prepare.json"  # what covid-ddp-prepare wrote of the folder
META_FILE = "meta.npz"  # optional: per-image patient_id, dataset (source), ... (docs/data.md)


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


def as_text(values: np.ndarray) -> np.ndarray:
    """A meta.npz array as text: ids and names may be stored as numbers or bytes."""
    return np.char.decode(values) if values.dtype.kind == "S" else values.astype(str)


def to_binary(labels: np.ndarray) -> np.ndarray:
    """One-hot 4-class rows -> 0 (non-COVID: classes 0, 1) or 1 (COVID: classes 2, 3), all at once."""
    return (labels.argmax(axis=1) >= 2).astype(np.int64)
