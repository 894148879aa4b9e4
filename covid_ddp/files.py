"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Each writer fills a temporary file in the destination's folder (same file
system, so the final ``os.replace`` is atomic), flushes it to disk, then renames.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError


@contextmanager
def atomic_path(destination: Path):
    """Yield a temporary path; on success it replaces ``destination``, on failure it is removed."""
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    except OSError as error:
        raise _cannot_write(destination, error) from error
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, destination)
    except OSError as error:  # a full disk, a read-only folder: the old file, if any, is untouched
        raise _cannot_write(destination, error) from error
    finally:
        tmp_path.unlink(missing_ok=True)


def _cannot_write(destination: Path, error: OSError) -> UserError:
    return UserError(f"cannot write {destination}: {error.strerror or error}")


def write_json(destination: Path, payload: dict) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_torch(destination: Path, payload) -> None:
    with atomic_path(destination) as tmp:
        torch.save(payload, tmp)
