"""Images files written and read a row at a time, so that a set larger than memory passes through.

``covid-ddp-prepare`` appends each decoded image to a store as it comes (``RowWriter``), reads it
back in chunks for the duplicate search (``StoreRows``: plain reads, not a mapping, so the pages
read do not stay in the process), and turns it into the folder's images file: the store itself,
or a compressed ``.npz`` streamed from it (``write_npz``). The files are byte for byte what numpy
writes for the same array (``np.lib.format.open_memmap``, ``np.savez_compressed``), bar the
time stamps a zip archive keeps.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_path
from .format import IMAGES_KEY

_CHUNK_BYTES = 64 << 20  # read and written at a time


def _header(count: int, size: int) -> bytes:
    """The .npy header numpy writes for a (count, size, size) uint8 array (format 1.0, padded so
    that the count can grow in place)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (count, size, size)})
    return buffer.getvalue()


class RowWriter:
    """A store of up to ``capacity`` images of ``size`` x ``size``, written one image at a time;
    ``finish(keep)`` leaves the rows ``keep`` (in order), moved up in place."""

    def __init__(self, path: Path, capacity: int, size: int):
        self.path, self.size, self.count = Path(path), size, 0
        self.offset = len(_header(capacity, size))
        self.file = open(self.path, "wb")
        self.file.write(_header(capacity, size))

    def append(self, image: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        self.count += 1

    def finish(self, keep: np.ndarray | None = None) -> Path:
        """Close the store with the rows ``keep`` (sorted; all when None) and their count in its header."""
        self.file.close()
        keep = np.arange(self.count) if keep is None else np.asarray(keep, dtype=np.int64)
        row_bytes = self.size * self.size
        with open(self.path, "r+b") as handle:
            moved = keep != np.arange(len(keep))  # rows after the first dropped one move up
            for target, source in zip(np.flatnonzero(moved), keep[moved]):
                handle.seek(self.offset + int(source) * row_bytes)
                row = handle.read(row_bytes)
                handle.seek(self.offset + int(target) * row_bytes)
                handle.write(row)
            handle.truncate(self.offset + len(keep) * row_bytes)
            header = _header(len(keep), self.size)
            if len(header) != self.offset:  # (numpy pads headers so that this does not happen)
                raise RuntimeError(f"{self.path}: the header of {len(keep)} images would not fit in place")
            handle.seek(0)
            handle.write(header)
        return self.path

    def close(self) -> None:
        self.file.close()


class StoreRows:
    """A store's images read on demand (``rows[a:b]``, ``rows[indices]``): reads, not a mapping,
    so a pass over a store larger than memory holds one chunk at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "rb", buffering=0)  # closed with this object
        version = np.lib.format.read_magic(self.file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(self.file)
        if dtype != np.uint8 or fortran_order or len(shape) != 3:
            raise ValueError(f"{path}: not a store of uint8 images (N, S, S) in C order")
        self.offset, self.shape, self.dtype = self.file.tell(), tuple(shape), np.dtype(np.uint8)
        self.row_bytes = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read(start, max(stop - start, 0))
            index = np.arange(start, stop, step)
        return np.stack([self._read(int(row), 1)[0] for row in np.asarray(index).reshape(-1)]) \
            if np.size(index) else np.empty((0, *self.shape[1:]), np.uint8)

    def _read(self, start: int, count: int) -> np.ndarray:
        data = os.pread(self.file.fileno(), count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape[1:])

    def chunks(self):
        """The images in order, as arrays of about 64 MiB."""
        step = max(1, _CHUNK_BYTES // self.row_bytes)
        for start in range(0, len(self), step):
            yield self[start : start + step]


def write_npz(path: Path, rows: StoreRows) -> Path:
    """``rows`` as ``np.savez_compressed(path, train_images=...)`` writes them, streamed from the
    store (the same member, byte for byte); atomically."""
    with atomic_path(Path(path)) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            with archive.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as member:
                member.write(_header(len(rows), rows.shape[-1]))
                for chunk in rows.chunks():
                    member.write(chunk.tobytes())
    return Path(path)


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
