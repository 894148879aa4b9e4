"""The MCFAM format: ``train_images<S>.npz`` (key ``train_images``, ``(N, S, S) uint8``) and
``train_labels.npz`` (key ``train_labels``, ``(N, 4)`` one-hot; indices 0 and 1 are non-COVID, 2 and 3
COVID), their names and checks, and ``.npz`` files read without pickles.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGES_KEY = "train_images"  # the array's key; its file is train_images<S>.npz (or the store's .npy)
IMAGES_FILE = f"{IMAGES_KEY}64.npz"  # MCFAM's images file
LABELS_FILE, LABELS_KEY = "train_labels.npz", "train_labels"
PREPARE_RECORD = "prepare.json"  # what covid-ddp-prepare wrote of the folder
META_FILE = "meta.npz"  # optional: per-image patient_id, dataset (source), ... (docs/data.md)
COPY_GROUP_KEY = "duplicate_group"  # meta.npz: per image, the first row of its copies (covid-ddp-prepare)


def to_binary(labels: np.ndarray) -> np.ndarray:
    """One-hot 4-class rows -> 0 (non-COVID: classes 0, 1) or 1 (COVID: classes 2, 3), all at once."""
    return (labels.argmax(axis=1) >= 2).astype(np.int64)


NUM_CLASSES = 2


CLASS_NAMES = ("Non-COVID", "COVID")


IMAGE_SIZE = 64  # the default side: the seed's, MCFAM's, and that of weights without a sidecar naming another


MIN_IMAGE_SIZE = 8  # a side below this is not an image a convolution can read


MCFAM_BASE_URL = "http://www-users.math.umn.edu/~jwcalder/MCFAM/"


def sha256_of(path: Path) -> str:
    """The file's sha256, hashed once per version of the file (a run checks and records it several times)."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@dataclass
class RawData:
    """The whole set as loaded: images (N, S, S) uint8 (in memory, or mapped from a store), one-hot
    labels (N, 4), where it came from."""

    images: np.ndarray
    labels: np.ndarray
    provenance: dict = field(default_factory=dict)
    meta: dict | None = None  # per-image arrays of meta.npz (patient_id, dataset, ...), when present

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def fingerprint(data: RawData) -> str:
    """What identifies the set's content (not where it lies): the files' sha256, or the generator's settings."""
    files = data.provenance.get("files")
    parts = {name: entry["sha256"] for name, entry in files.items()} if files else data.provenance
    return ", ".join(f"{key} {value}" for key, value in sorted(parts.items()))
