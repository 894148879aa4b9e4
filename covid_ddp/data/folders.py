"""Data: the MCFAM files (downloaded, cached, validated), folders read as one set, the synthetic set, datasets.

The MCFAM set is two files, ``train_images64.npz`` (key ``train_images``,
``(N, 64, 64) uint8``) and ``train_labels.npz`` (key ``train_labels``,
``(N, 4)`` one-hot). Label indices 0 and 1 are non-COVID, 2 and 3 are COVID.
Any folder holding two files of that format can be used with ``--data-dir``, its images at
any square size ``S`` (``train_images{S}.npz``, or the memory-mapped store ``train_images{S}.npy``:
``store.py``).

Images stay ``uint8`` in memory (one byte a pixel); conversion to float and
normalisation happen per batch, inside the model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bounds import IMAGE_SIZE, MIN_IMAGE_SIZE
from .download import DEFAULT_TIMEOUT_S, DownloadError, download
from .errors import UserError
from .files import atomic_path
from .store import find_images_file, image_size_of, read_store
from .synthetic import make_synthetic

MCFAM_BASE_URL = "http://www-users.math.umn.edu/~jwcalder/MCFAM/"
IMAGES_FILE, IMAGES_KEY = "train_images64.npz", "train_images"
LABELS_FILE, LABELS_KEY = "train_labels.npz", "train_labels"
PREPARE_RECORD = "prepare.json"  # what covid-ddp-prepare wrote of the folder
META_FILE = "meta.npz"  # optional: per-image patient_id, dataset (source), ... (docs/data.md)


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


def default_data_dir() -> Path:
    """A per-user cache folder, as pip and torch hub use ($XDG_CACHE_HOME or ~/.cache)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "covid_ddp" / "mcfam"


# --- loading and validation -------------------------------------------------


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
    """{"prepare": ...}: what covid-ddp-prepare recorded of the folder (its prepare.json, lists
    reduced to their length, and the file's sha256), or {} for a folder it did not make."""
    path = folder / PREPARE_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        summary = {key: (len(value) if isinstance(value, list) else value) for key, value in dict(record).items()}
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


def fetch_mcfam(data_dir: Path, base_url: str = MCFAM_BASE_URL, pins: dict | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Download whichever MCFAM file is missing from ``data_dir``, or changed since it was downloaded.

    A download is kept only when it loads and validates (and matches its pinned sha256, if
    any); its sha256 is recorded beside it (``<file>.sha256``) so a cached copy that later
    changes on disk is noticed and fetched again.
    """
    pins = pins or {}
    if not all((Path(data_dir) / name).exists() for name in (IMAGES_FILE, LABELS_FILE)):
        refuse_a_folder_of_other_files(Path(data_dir))
    mcfam_images = functools.partial(validate_images, image_size=image_size_of(IMAGES_FILE))  # 64: MCFAM's
    for name, key, validate in ((IMAGES_FILE, IMAGES_KEY, mcfam_images), (LABELS_FILE, LABELS_KEY, validate_labels)):
        destination = Path(data_dir) / name
        problem = ""
        if destination.exists():
            if _matches_recorded_hash(destination):
                continue
            problem = f"cached {destination} no longer matches the sha256 recorded when it was downloaded; "
            print(f"note: {problem}fetching it again", file=sys.stderr)
            destination.unlink()
        url = base_url.rstrip("/") + "/" + name

        def check(tmp: Path, key=key, validate=validate, pinned=pins.get(name)) -> None:
            if pinned and (actual := sha256_of(tmp)) != pinned.lower():
                raise ValueError(f"its sha256 {actual} is not the pinned {pinned}")
            validate(load_array(tmp, key), url)

        try:
            download(url, destination, validate=check, timeout_s=timeout_s)
        except (DownloadError, UserError) as error:
            raise UserError(
                f"{problem}{error}. To go on offline, pass --data-dir DIR with a local copy of {IMAGES_FILE} and "
                f"{LABELS_FILE}, or use --dataset synthetic"
            ) from None
        with atomic_path(_hash_record(destination)) as tmp:
            tmp.write_text(sha256_of(destination) + "\n")


def refuse_a_folder_of_other_files(folder: Path) -> None:
    """A --data-dir without the two files but with others (a folder of PNGs, say) is a mistake to
    name, not a cache to download MCFAM into: only a new, empty or MCFAM-only folder is one."""
    if not folder.is_dir():
        return
    ours = {IMAGES_FILE, LABELS_FILE, *(_hash_record(Path(name)).name for name in (IMAGES_FILE, LABELS_FILE))}
    others = sorted(p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith("."))
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(f"{folder} holds no {IMAGES_FILE} and {LABELS_FILE} but {len(others)} other file(s) ({listed}); "
                        "--data-dir takes a folder with those two files (covid-ddp-prepare --output-dir DIR SRC makes one "
                        "from PNG/JPEG/DICOM images), and --download fills only a new or empty folder with MCFAM")


def _hash_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _matches_recorded_hash(path: Path) -> bool:
    """True when no hash was recorded (a copy the user put there) or the recorded one matches."""
    record = _hash_record(path)
    return not record.exists() or record.read_text().strip() == sha256_of(path)


def check_pins(data: RawData, pins: dict) -> None:
    """Refuse files whose sha256 is not the one pinned with --sha256-images / --sha256-labels."""
    for name, pinned in pins.items():
        if name not in data.provenance["files"]:
            raise UserError(f"--sha256-images pins {name}, which {data.provenance['data_dir']} does not hold; "
                            "pin only MCFAM's own files")
        actual = data.provenance["files"][name]["sha256"]
        if pinned and actual != pinned.lower():
            raise UserError(f"{Path(data.provenance['data_dir']) / name}: sha256 is {actual}, not the pinned {pinned}; "
                            "the file differs from the one you pinned")


def fetch_dataset(dataset: str, data_dir, base_url: str, pins: dict | None = None, into_data_dir: bool = False) -> None:
    """Download what ``load_dataset`` will read and is missing: MCFAM into the cache, or into the
    one ``--data-dir`` only when asked (``into_data_dir``, ``--download``). A user's folders are
    never a download target otherwise: ``load_data_dir`` says what they lack."""
    folders = as_folders(data_dir)
    if dataset != "mcfam":
        return
    if folders is None:
        fetch_mcfam(default_data_dir(), base_url, pins)
    elif into_data_dir:
        if len(folders) > 1:
            raise UserError("--download fills one --data-dir folder; several folders are read as they are")
        fetch_mcfam(folders[0], base_url, pins)


def load_dataset(dataset: str, data_dir, synthetic_size: int, seed: int, base_url: str,
                 pins: dict | None = None, image_size: int | None = None) -> RawData:
    """The set a run trains on: synthetic, or MCFAM-format files in ``data_dir`` (one folder or a
    list; default: the cache), as they are (``fetch_dataset`` downloads first). Files a download
    brought (their sha256 recorded beside them) name ``base_url`` as their source in config.json."""
    if dataset == "synthetic":
        size = image_size or IMAGE_SIZE
        images, labels = make_synthetic(synthetic_size, seed, image_size=size)
        return RawData(images, labels, {"generator": "covid_ddp.synthetic", "size": synthetic_size, "seed": seed,
                                        "image_size": size})
    if dataset != "mcfam":
        raise UserError(f"unknown dataset '{dataset}': use 'mcfam' or 'synthetic'")
    folders = as_folders(data_dir) or [default_data_dir()]
    if pins and len(folders) > 1:
        raise UserError("--sha256-images/--sha256-labels pin the files of one folder; with several --data-dir "
                        "folders check config.json's sha256 of each instead")
    data = load_data_dirs(folders, image_size)
    check_pins(data, pins or {})
    # MCFAM only where a download brought the files (their sha256 recorded beside them): a folder
    # of the user's own is recorded as such, never with MCFAM's address.
    if all(_hash_record(folder / name).is_file() for folder in folders for name in (IMAGES_FILE, LABELS_FILE)):
        data.provenance.update(source="mcfam", source_url=base_url)
    else:
        data.provenance["source"] = "folders"
    return data


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


def _merged_meta(parts: list[RawData], names: list[str]) -> dict:
    keys = {"dataset", "patient_id"}.union(*(part.meta or {} for part in parts))
    merged = {}
    for key in sorted(keys):
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


def as_text(values: np.ndarray) -> np.ndarray:
    """A meta.npz array as text: ids and names may be stored as numbers or bytes."""
    return np.char.decode(values) if values.dtype.kind == "S" else values.astype(str)


def patient_ids(meta: dict | None, rows: np.ndarray) -> np.ndarray | None:
    """The patient id of each of ``rows`` (meta.npz 'patient_id', as text), or None without one.
    Ids are taken as given, as the patient-level split takes them: give each patient one id
    across folders (real-cxr's carry their source, 'hannover:e5c29e19')."""
    if meta is None or "patient_id" not in meta:
        return None
    return as_text(np.asarray(meta["patient_id"]))[rows]


def source_names(meta: dict | None, rows: np.ndarray) -> np.ndarray | None:
    """The source of each of ``rows`` (meta.npz 'dataset'; load_data_dirs fills in folder names), or None."""
    if meta is None or "dataset" not in meta:
        return None
    return as_text(np.asarray(meta["dataset"]))[rows]


def fingerprint(data: RawData) -> str:
    """What identifies the set's content (not where it lies): the files' sha256, or the generator's settings."""
    files = data.provenance.get("files")
    parts = {name: entry["sha256"] for name, entry in files.items()} if files else data.provenance
    return ", ".join(f"{key} {value}" for key, value in sorted(parts.items()))


# --- labels and statistics --------------------------------------------------


def to_binary(labels: np.ndarray) -> np.ndarray:
    """One-hot 4-class rows -> 0 (non-COVID: classes 0, 1) or 1 (COVID: classes 2, 3), all at once."""
    return (labels.argmax(axis=1) >= 2).astype(np.int64)


STATISTICS_CHUNK_PIXELS = 2**22  # 32 MiB as int64, whatever the image size


def pixel_statistics(images: np.ndarray, rows: np.ndarray, chunk: int | None = None) -> tuple[float, float]:
    """Mean and std of the pixels of ``images[rows]`` (uint8), exact: integer sums of the values
    and their squares over chunks of ``chunk`` rows (no float copy of the set, and a bounded
    int64 one: 1024 rows at 224 px would be 400 MB)."""
    chunk = chunk or max(1, STATISTICS_CHUNK_PIXELS // (images.shape[1] * images.shape[2]))
    total = total_sq = 0
    for start in range(0, len(rows), chunk):
        block = images[rows[start : start + chunk]].reshape(-1).astype(np.int64)
        total += int(block.sum())
        total_sq += int(block @ block)
    count = len(rows) * images.shape[1] * images.shape[2]
    mean = total / count
    std = max((total_sq - total * total / count) / count, 0.0) ** 0.5
    return mean, max(std, 1e-6)


def blank_rows(images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``images`` (all, or ``rows``) whose image is a single gray level: nothing in
    them to read. In chunks of STATISTICS_CHUNK_PIXELS (a mapped store is read, not copied)."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    chunk = max(1, STATISTICS_CHUNK_PIXELS // (images.shape[1] * images.shape[2]))
    blank = []
    for start in range(0, len(rows), chunk):
        block = np.asarray(images[rows[start : start + chunk]]).reshape(-1, images.shape[1] * images.shape[2])
        blank.append(rows[start : start + chunk][block.min(axis=1) == block.max(axis=1)])
    return np.concatenate(blank) if blank else np.empty(0, dtype=np.int64)


# --- the torch side ----------------------------------------------------------


def wants_device(images: np.ndarray, targets: np.ndarray, device: torch.device, mode: str) -> bool:
    """--data-on-device: 'yes', 'no', or 'auto' (on the device when it is the CPU, whose memory
    the set is already in, or when the set takes under a quarter of the free GPU memory). On
    the device, training batches are cut there (``loader.TrainingLoader``); left in host memory,
    a DataLoader gathers them."""
    return mode == "yes" or (mode == "auto" and _fits_on(device, images.nbytes + targets.nbytes))


def dataset_tensors(images: np.ndarray, targets: np.ndarray, device: torch.device, on_device: bool):
    """The uint8 set and its targets as tensors, moved to ``device`` once or left in host memory
    (a mapped store stays mapped: the tensor shares its read-only pages, nothing is written to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = torch.from_numpy(images), torch.from_numpy(targets)
    # On the CPU the set is where it should be already. (accelerate's device of a multi-process
    # CPU job is cpu:0, and .to("cpu:0") copies: a second copy of the set in every process, and
    # a mapped store copied out of the page cache.)
    if not on_device or torch.device(device).type == "cpu":
        return tensors
    return tuple(t.to(device) for t in tensors)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free / 4


class XrayDataset(torch.utils.data.Dataset):
    """Rows ``rows`` of a uint8 image tensor shared by all parts (no copy per split).

    Yields ``(image uint8 (1, 64, 64), target int64, row index)``. ``__getitems__``
    fetches a whole batch with one tensor index instead of one Python call a
    sample, on whatever device the tensors live (see ``dataset_tensors``); the row
    index lets tests check sharding and lets predictions be traced.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, rows: np.ndarray):
        self.images, self.targets = images, targets
        self.rows = torch.as_tensor(rows, dtype=torch.int64).to(images.device)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = self.rows[position]
        return self.images[row].unsqueeze(0), self.targets[row], row

    def __getitems__(self, positions: list[int]):
        return self.batch(torch.as_tensor(positions, dtype=torch.int64, device=self.rows.device))

    def batch(self, positions: torch.Tensor):
        """The images, targets and rows at ``positions`` (a tensor on the set's device), in one index each."""
        rows = self.rows[positions]
        return self.images.index_select(0, rows).unsqueeze(1), self.targets.index_select(0, rows), rows


def collate_batch(batch):
    """``__getitems__`` already returns a batch; accept single samples too (default path)."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)
