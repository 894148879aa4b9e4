"""Data folders: one folder, or several read as one set, checked and described.

Any folder holding the two files of the MCFAM format (``format.py``) can be used with
``--data-dir``, its images at any square size ``S`` (``train_images{S}.npz``, or the memory-mapped
store ``train_images{S}.npy``: ``store.py``), with an optional ``meta.npz`` (patient ids, sources).

Images stay ``uint8`` in memory (one byte a pixel); conversion to float and
normalisation happen per batch, inside the model.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .duplicates import first_copies
from .format import (COPY_GROUP_KEY, IMAGES_FILE, IMAGES_KEY, LABELS_FILE, LABELS_KEY, META_FILE, PREPARE_RECORD, RawData, sha256_of,
                     to_binary)
from .splits import as_text
from .store import (find_images_file, image_size_of, load_array, read_npz, read_store, refuse_a_folder_of_other_files,
                    validate_images, validate_labels)

# --- loading and validation -------------------------------------------------


def load_data_dir(data_dir: Path, image_size: int | None = None) -> RawData:
    """Load and validate an MCFAM-format pair of files from ``data_dir`` (its images file of
    ``image_size``, or its only one); a store's images stay mapped, not read."""
    images_path = check_data_dir(Path(data_dir), image_size)
    labels_path = Path(data_dir) / LABELS_FILE
    images = read_images(images_path)
    validate_images(images, images_path, image_size_of(images_path))
    labels = load_array(labels_path, LABELS_KEY)
    validate_labels(labels, labels_path)
    if len(images) != len(labels):
        raise UserError(f"{data_dir}: {len(images)} images but {len(labels)} labels; the two files must match")
    meta_path = Path(data_dir) / META_FILE
    described = (images_path, labels_path, *([meta_path] if meta_path.is_file() else []))
    covid = int(to_binary(labels).sum())
    provenance = {
        "data_dir": str(Path(data_dir).resolve()),
        "files": {p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size} for p in described},
        "images": len(images), "covid": covid, "non_covid": len(images) - covid,
        "image_size": int(images.shape[1]), "store": images_path.suffix == ".npy",
        **prepared_by(Path(data_dir)),
    }
    return RawData(images, labels.astype(np.float32), provenance, load_meta(meta_path, len(images)))


def prepared_by(folder: Path) -> dict:
    """{"prepare": ...}: what covid-ddp-prepare recorded of the folder (its prepare.json, the lists
    of skipped files and duplicate pairs reduced to their length, and the file's sha256), or {}
    for a folder it did not make."""
    path = folder / PREPARE_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        summary = {key: (len(value) if isinstance(value, list) and key != "inputs" else value)
                   for key, value in dict(record).items()}
    except (OSError, ValueError, TypeError) as error:
        summary = {"unreadable": f"{type(error).__name__}: {error}"}
    return {"prepare": {**summary, "sha256": sha256_of(path)}}


def read_images(path: Path) -> np.ndarray:
    """An images file's array: a store mapped (nothing read yet), an .npz read whole."""
    return read_store(path) if path.suffix == ".npy" else load_array(path, IMAGES_KEY)


def check_data_dir(folder: Path, image_size: int | None = None) -> Path:
    """A data folder holds an images file (of ``image_size``, or one only) and the labels; returns
    the images file. Else one line says what is wrong and how to go on."""
    fix = (f"--data-dir takes a folder with {IMAGES_FILE} (or train_images<S>.npz/.npy of another size) and "
           f"{LABELS_FILE} (covid-ddp-prepare makes one from PNG/JPEG/DICOM images; covid-ddp-train --download fills "
           "a new one with MCFAM)")
    if not folder.exists():
        raise UserError(f"{folder} does not exist (nothing was created there); {fix}")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; {fix}")
    images_path = find_images_file(folder, image_size)
    labels_there = (folder / LABELS_FILE).is_file()
    if images_path is not None and labels_there:
        return images_path
    if images_path is None and not labels_there:
        refuse_a_folder_of_other_files(folder)
        raise UserError(f"{folder} holds neither {IMAGES_FILE} nor {LABELS_FILE}; {fix}")
    present, missing = ([images_path.name], LABELS_FILE) if not labels_there else ([LABELS_FILE], IMAGES_FILE)
    both = f"{folder / present[0]} holds both '{IMAGES_KEY}' and '{LABELS_KEY}': save '{_key_of(missing)}' in " \
        f"{missing} instead (np.savez(\"{missing}\", {_key_of(missing)}=...))" \
        if {IMAGES_KEY, LABELS_KEY} <= _npz_keys(folder / present[0]) else fix
    raise UserError(f"{folder / missing} is missing (beside {present[0]}); {both}")


def _key_of(file_name: str) -> str:
    return IMAGES_KEY if file_name == IMAGES_FILE else LABELS_KEY


def _npz_keys(path: Path) -> set[str]:
    """The array names of an .npz file, read from its zip directory (no array is loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()


def load_meta(path: Path, count: int) -> dict | None:
    """The per-image arrays of an optional meta.npz (patient ids, sources), checked against the image count."""
    if not path.is_file():
        return None
    meta = read_npz(path)
    for key, values in meta.items():
        if np.ndim(values) != 1 or len(values) != count:
            raise UserError(f"{path}: '{key}' has shape {np.shape(values)} for {count} images; one entry per image "
                            "is needed")
    return meta


def as_folders(data_dir) -> list[Path] | None:
    """--data-dir as a list of folders (a config.json of an earlier version holds one string)."""
    if data_dir is None:
        return None
    return [Path(folder) for folder in ([data_dir] if isinstance(data_dir, (str, Path)) else data_dir)]


def load_data_dirs(folders: list[Path], image_size: int | None = None) -> RawData:
    """Several MCFAM-format folders as one set, rows in folder order. Every image keeps its source:
    meta.npz's ``dataset`` and ``patient_id``, or, for a folder without them, the folder's name
    and one patient per image; other meta.npz arrays missing in a folder are filled with ''."""
    if len(folders) == 1:
        return load_data_dir(folders[0], image_size)
    resolved = [Path(folder).resolve() for folder in folders]
    repeated = [str(folder) for folder, path in zip(folders, resolved) if resolved.count(path) > 1]
    if repeated:
        raise UserError(f"--data-dir: {repeated[0]} is given twice (as {' and '.join(repeated)}); give each folder "
                        "once")
    names = [path.name for path in resolved]
    if len(set(names)) < len(names):
        raise UserError(f"--data-dir: two folders share a name ({', '.join(map(str, folders))}); their files and "
                        "sources are told apart by folder name, so rename one")
    parts = [load_data_dir(folder, image_size) for folder in folders]
    sizes = {part.image_size for part in parts}
    if len(sizes) > 1:
        listed = ", ".join(f"{name} {part.image_size}x{part.image_size}" for name, part in zip(names, parts))
        raise UserError(f"--data-dir: the folders hold images of different sizes ({listed}); prepare them at one "
                        f"size (covid-ddp-prepare --image-size) or pass --image-size where each holds that size")
    provenance = {"data_dirs": [part.provenance["data_dir"] for part in parts],
                  "images_per_dir": [len(part.images) for part in parts],
                  "folders": [{key: value for key, value in part.provenance.items() if key != "files"} for part in parts],
                  "files": {f"{name}/{file}": entry for name, part in zip(names, parts)
                            for file, entry in part.provenance["files"].items()}}
    return RawData(np.concatenate([part.images for part in parts]), np.concatenate([part.labels for part in parts]),
                   provenance, _merged_meta(parts, names))


def _merged_copy_groups(parts: list[RawData]) -> np.ndarray:
    """Each folder's copy groups (meta.npz's, or its exact copies) as rows of the joined set.
    (Copies across folders are found only when the folders are prepared together.)"""
    offsets = np.cumsum([0] + [len(part.images) for part in parts[:-1]])
    return np.concatenate([offset + (part.meta[COPY_GROUP_KEY] if COPY_GROUP_KEY in (part.meta or {})
                                     else first_copies(part.images)) for offset, part in zip(offsets, parts)])


def _merged_meta(parts: list[RawData], names: list[str]) -> dict:
    keys = {"dataset", "patient_id"}.union(*(part.meta or {} for part in parts))
    merged = {COPY_GROUP_KEY: _merged_copy_groups(parts)} if COPY_GROUP_KEY in keys else {}
    for key in sorted(keys - {COPY_GROUP_KEY}):
        columns = [_meta_column(part, name, key) for part, name in zip(parts, names)]
        kinds = {column.dtype.kind for column in columns}
        if kinds <= set("iu") and all(_fits_int64(column) for column in columns):
            merged[key] = np.concatenate(columns, dtype=np.int64)  # numpy would make int64 + uint64 float64
        elif kinds <= set("biuf"):
            merged[key] = np.concatenate(columns)
        else:
            merged[key] = np.concatenate([as_text(column) for column in columns])
    return merged


def _fits_int64(column: np.ndarray) -> bool:
    return column.dtype != np.uint64 or not len(column) or int(column.max()) <= np.iinfo(np.int64).max


def _meta_column(part: RawData, folder_name: str, key: str) -> np.ndarray:
    count = len(part.images)
    if part.meta is not None and key in part.meta:
        return part.meta[key]
    if key == "dataset":
        return np.full(count, folder_name)
    if key == "patient_id":
        return np.array([f"{folder_name}:{row}" for row in range(count)])
    return np.full(count, "")
