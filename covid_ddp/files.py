"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Each writer fills a temporary file in the destination's folder (same file
system, so the final ``os.replace`` is atomic), flushes it to disk, then renames. The
file gets the mode the user's umask gives, as any tool's output does (``mkstemp``
alone makes 0600: nobody else on a shared machine could read the model).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError, raise_if_stopped, first_line

# torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ...".
_NEARLY_FULL_BYTES = 1 << 20


@contextmanager
def atomic_path(destination: Path):
    """Yield a temporary path; on success it replaces ``destination``, on failure it is removed."""
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    except OSError as error:
        raise cannot_write(destination, error) from error
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
        raise_if_stopped()  # (a stop whose error a finalizer swallowed: not written as if whole)
        os.replace(tmp_path, destination)
    except OSError as error:  # a full disk, a read-only folder: the old file, if any, is untouched
        raise cannot_write(destination, error) from error
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask, read where Linux shows it (setting it to read it, the portable way,
    would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cannot_write(destination: Path, error: Exception) -> UserError:
    """The failed write in words. Call it while the partial file still fills the disk."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    elif _nearly_full(Path(destination)):
        reason = "No space left on device"
    else:
        reason = first_line(error)
    return UserError(f"cannot write {destination}: {reason}")


def _nearly_full(path: Path) -> bool:
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return folder is not None and shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def write_json(destination: Path, payload: dict) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_torch(destination: Path, payload) -> None:
    with atomic_path(destination) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:  # its words for a full disk; the partial file is still there to tell
            raise cannot_write(destination, error) from error


SAFETENSORS_SUFFIX = ".safetensors"


def save_safetensors(destination: Path, tensors: dict, metadata: dict[str, str]) -> None:
    """``tensors`` as a .safetensors file (no pickle: any framework reads it), ``metadata`` in its header."""
    from safetensors.torch import save_file  # (accelerate's own dependency)

    with atomic_path(destination) as tmp:
        try:
            save_file({key: value.contiguous() for key, value in tensors.items()}, str(tmp), metadata=metadata)
        except (OSError, RuntimeError) as error:
            raise cannot_write(destination, error) from error


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a .safetensors file's header ({} without any)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_plain(path: Path, kind: str, map_location="cpu"):
    """``torch.load(weights_only=True)``, or a .safetensors file: tensors and plain containers only.
    A file that holds anything else (a pickled object could run code when read) is a one-line
    error, not read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as error:  # its errors name a damaged header or a short file
            raise UserError(f"{path}: not a loadable {kind} (safetensors: {first_line(error)})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise _unloadable(path, kind, error) from None


def _unloadable(path: Path, kind: str, error: Exception) -> UserError:
    """Why ``torch.load(weights_only=True)`` could not read ``path``, in the user's terms."""
    # A class weights_only refuses ("Unsupported global" / "class"; torch would advise weights_only=False),
    # not a damaged file ("Unsupported operand").
    if isinstance(error, pickle.UnpicklingError) and re.search(r"unsupported (global|class)", str(error), re.I):
        return UserError(f"{path}: refused: this {kind} holds pickled Python objects besides tensors, which could "
                         "run code when read; save plain tensors (a state_dict) instead")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6 (or with _use_new_zipfile_serialization=False)
    # a pickle stream, which starts with the protocol opcode. Anything else is a text file, a picture...
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return UserError(f"{path}: not a PyTorch {kind} (torch.save writes a zip archive and this file is not one)")
    damaged = "damaged: " if isinstance(error, pickle.UnpicklingError) else ""
    return UserError(f"{path}: not a loadable {kind} ({damaged}{first_line(error)})")
