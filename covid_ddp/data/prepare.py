"""Turn folders of chest X-rays (PNG, JPEG, DICOM) into a covid_ddp training folder.

    covid-ddp-prepare --output-dir data/mine hospital_a/ cases.csv
    covid-ddp-train --data-dir data/mine --group-split

Each SRC is either a folder with one subfolder per class, or a CSV with the columns
``path`` and ``label`` and, optionally, ``patient_id``, ``view`` and ``source`` (paths
relative to the CSV). Class names: ``0``-``3`` (the MCFAM indices), or, in any case,
``normal`` -> 0, ``pneumonia`` / ``non-covid`` / ``other`` -> 1, ``covid`` / ``covid-19``
-> 2 (3, MCFAM's "COVID, AP view", when the view is AP); ``--label-map NAME=INDEX,...``
names others. Writes ``train_images64.npz``, ``train_labels.npz``, ``meta.npz`` (per
image: ``patient_id``, ``dataset``, ``path``, ``view``, ``label_name``) and
``prepare.json`` (counts, duplicates, skipped files), all at once or not at all.

Images are decoded in parallel (``--workers``, default every core) by
``radiographs.read_radiograph``: the shared real sets' processing. Without a patient id
(CSV column or DICOM PatientID, stored hashed), each image is its own patient; the
``dataset`` is the CSV's ``source`` column, else the SRC's name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli import say
from ..destinations import check_can_make
from ..errors import UserError, first_few, raise_if_stopped, type_and_first_line
from ..files import current_umask, write_json
from .duplicates import copy_groups, find_duplicates, rows_to_drop
from .format import COPY_GROUP_KEY, IMAGE_SIZE, IMAGES_KEY, LABELS_FILE, LABELS_KEY, META_FILE, PREPARE_RECORD
from .image_rows import RowWriter, StoreRows, write_npz
from .listing import read_listing
from .parallel import in_order
from .radiographs import is_radiograph_file, read_with_tags
from .store import images_name

LABEL_NAMES = {"0": 0, "1": 1, "2": 2, "3": 3, "normal": 0, "pneumonia": 1, "non-covid": 1, "other": 1,
               "covid": 2, "covid-19": 2}
COVID_AP = 3  # MCFAM's class for a COVID film taken in the AP view


@dataclass
class Item:
    """One image to prepare, with what is known of it before decoding."""

    file: Path
    shown_path: str  # relative to its SRC: what meta.npz and messages show
    label_name: str
    dataset: str
    patient_id: str = ""
    view: str = ""


# --- finding the images ------------------------------------------------------------


def collect_items(sources: list[str], allow_outside: bool = False) -> list[Item]:
    """Every image named by the SRC arguments, in a stable order (SRC, then path); a CSV is read
    strictly (``listing.read_listing``), its paths inside its folder unless ``allow_outside``."""
    items = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            items.extend(_items_of_class_folders(path))
        elif path.is_file() and path.suffix.lower() == ".csv":
            items.extend(_items_of_csv(path, allow_outside))
        elif not path.exists():
            raise UserError(f"{source} does not exist")
        else:
            raise UserError(f"{source}: not a folder of class subfolders or a .csv file")
    if not items:
        raise UserError("no PNG, JPEG or DICOM files in the class subfolders or CSVs of " + ", ".join(sources))
    return items


def describe_inputs(sources: list[str]) -> list[dict]:
    """prepare.json's ``inputs``: each SRC as given and as an absolute path, and its kind, so that a
    run keeps its way back to the original files (meta.npz's paths are relative to them)."""
    return [{"given": str(source), "path": str(Path(source).resolve()),
             "kind": "folder" if Path(source).is_dir() else "csv"} for source in sources]


def _items_of_class_folders(folder: Path) -> list[Item]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{folder}: no class subfolders (normal/, pneumonia/, covid/, or 0/ .. 3/); "
                        "or give a CSV with path and label columns")
    source = folder.resolve().name
    return [Item(file, str(file.relative_to(folder)), class_folder.name, source) for class_folder in classes
            for file in sorted(p for p in class_folder.rglob("*") if is_radiograph_file(p))]


def _items_of_csv(table: Path, allow_outside: bool) -> list[Item]:
    return [Item(row.file, row.path, row.values["label"], row.values.get("source") or table.stem,
                 row.values.get("patient_id", ""), row.values.get("view", ""))
            for row in read_listing(table, allow_outside)]


# --- labels ----------------------------------------------------------------------


def parse_label_map(text: str | None) -> dict[str, int]:
    """``NAME=INDEX,...`` on top of the built-in names (case-insensitive)."""
    names = dict(LABEL_NAMES)
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, index = entry.partition("=")
        if not name.strip() or index.strip() not in ("0", "1", "2", "3"):
            raise UserError(f"--label-map: '{entry}' is not NAME=INDEX with an index 0-3 "
                            "(0 normal, 1 other non-COVID, 2 COVID, 3 COVID AP view)")
        names[name.strip().lower()] = int(index)
    return names


def class_index(item: Item, names: dict[str, int]) -> int:
    index = names.get(item.label_name.strip().lower())
    if index is None:
        raise UserError(f"{item.file}: unknown class '{item.label_name}'; known: {', '.join(sorted(names))}; "
                        "name it with --label-map NAME=INDEX (0 normal, 1 other non-COVID, 2 COVID)")
    return COVID_AP if index == 2 and item.view.upper() == "AP" else index


# --- decoding --------------------------------------------------------------------


def decode(file: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray | None, dict, str]:
    """(image, DICOM tags, error message): run in worker processes, so errors come back as text."""
    try:
        return (*read_with_tags(file, size), "")
    except UserError as error:
        return None, {}, str(error)
    except Exception as error:  # a decoder's own failure on a malformed file: still this file's problem
        return None, {}, f"{file}: cannot be read ({type_and_first_line(error)})"


def decoded_in_order(items: list[Item], workers: int, progress: bool, size: int = IMAGE_SIZE):
    """Each item decoded at ``size``, yielded in order as it comes, over ``workers`` processes:
    (image or None, DICOM tags, error message)."""
    files = [item.file for item in items]
    yield from in_order(functools.partial(decode, size=size), files, workers, "covid-ddp-prepare" if progress else None)


# --- the prepared folder ------------------------------------------------------------


@dataclass
class PrepareOptions:
    workers: int = 1
    skip_errors: bool = False
    drop_duplicates: bool = False
    size: int = IMAGE_SIZE
    image_format: str = "auto"  # npz, store, or auto: the store for sets over STORE_FROM_BYTES
    overwrite: bool = False
    progress: bool = True


def prepare(items: list[Item], names: dict[str, int], output_dir: Path, options: PrepareOptions,
            inputs: list[dict] | None = None) -> dict:
    """Decode ``items`` into the training folder ``output_dir`` and return its record
    (prepare.json). Each image goes to disk as it is decoded: memory holds the per-image records
    and one chunk of images, whatever the number of images. All files appear at once or not at all."""
    for item in items:  # unknown class names fail before the decoding
        class_index(item, names)
    with staging_folder(Path(output_dir), options.overwrite) as staging:
        rows = RowWriter(staging / "images.partial", len(items), options.size)
        try:
            kept, report = _decode_into(rows, items, options)
        finally:
            rows.close()
        items = [items[row] for row in kept]
        classes = np.array([class_index(item, names) for item in items], dtype=np.int64)
        images = StoreRows(rows.finish())
        keep, groups = _handle_duplicates(images, classes, items, options.drop_duplicates, report)
        images = StoreRows(rows.finish(keep))
        items, classes = [items[row] for row in keep], classes[keep]
        store = wants_store(options.image_format, len(items) * options.size**2)
        images_file = staging / images_name(options.size, store)
        if store:
            os.replace(rows.path, images_file)
        else:
            write_npz(images_file, images)
            os.remove(rows.path)
        report.update(images=len(items), per_class={str(c): int((classes == c).sum()) for c in range(4)},
                      per_dataset=dict(sorted(Counter(item.dataset for item in items).items())),
                      inputs=inputs or [], images_file=images_file.name)
        _write_records(staging, items, classes, groups, report)
    return report


def _decode_into(rows: RowWriter, items: list[Item], options: PrepareOptions) -> tuple[list[int], dict]:
    """Append every readable item's image to ``rows``; (the rows kept, the report so far)."""
    started = time.perf_counter()
    kept, skipped = [], []
    for row, (image, tags, error) in enumerate(decoded_in_order(items, options.workers, options.progress,
                                                                  options.size)):
        if error:
            skipped.append((items[row], error))
            continue
        _fill_from_tags(items[row], tags)  # before the class: a DICOM's view can make it 3
        rows.append(image)
        kept.append(row)
    seconds = time.perf_counter() - started
    if skipped and not options.skip_errors:
        raise UserError(f"{skipped[0][1]} ({len(skipped)} unreadable file(s) in all; --skip-errors reports each "
                        "and prepares the rest)")
    for _, error in skipped:
        say(f"covid-ddp-prepare: skipped: {error}")
    if not kept:
        raise UserError("none of the files could be read")
    return kept, {"images_found": len(items), "skipped": [{"path": str(i.file), "error": e} for i, e in skipped],
                  "decode_seconds": round(seconds, 2), "images_per_s": round(len(items) / max(seconds, 1e-9), 1),
                  "workers": options.workers, "image_size": options.size}


def _fill_from_tags(item: Item, tags: dict) -> None:
    """A DICOM's own patient and view where the CSV gave none; else one patient per image."""
    item.patient_id = item.patient_id or tags.get("patient_id", "") or f"{item.dataset}:{item.shown_path}"
    item.view = item.view or tags.get("view", "")


def _handle_duplicates(images, classes, items, drop: bool, report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the rows to keep, each kept row's copy group) after recording the pairs in ``report``."""
    pairs = find_duplicates(images)
    report["duplicates"] = [{"first": items[p.first].shown_path, "second": items[p.second].shown_path,
                             "first_dataset": items[p.first].dataset, "second_dataset": items[p.second].dataset,
                             "similarity": p.similarity, "exact": p.exact} for p in pairs]
    exact = sum(p.exact for p in pairs)
    if pairs:
        action = "dropped" if drop else "kept (--drop-duplicates removes them)"
        say(f"covid-ddp-prepare: {exact} exact and {len(pairs) - exact} near-duplicate pair(s), listed in "
            f"{PREPARE_RECORD}; {action}")
    everything = np.arange(len(items))
    if not drop or not pairs:
        report["dropped_duplicates"] = 0
        return everything, copy_groups(pairs, len(items))
    dropped = rows_to_drop(pairs, classes >= 2)
    keep = np.setdiff1d(everything, dropped)
    report["dropped_duplicates"] = int(len(dropped))
    if not len(keep):
        raise UserError(f"--drop-duplicates would drop all {len(items)} images (every one is in a pair whose labels "
                        "disagree); see the pairs without it")
    # A copy of a dropped image may remain (a, b, c near copies of one another, c kept): still grouped.
    return keep, _first_rows(copy_groups(pairs, len(items))[keep])


def _first_rows(groups: np.ndarray) -> np.ndarray:
    """Each row's group named by its first row here (``groups`` may name rows dropped since)."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return first[inverse]


def _write_records(folder: Path, items: list[Item], classes: np.ndarray, groups: np.ndarray, report: dict) -> None:
    np.savez_compressed(folder / LABELS_FILE, **{LABELS_KEY: np.eye(4, dtype=np.float32)[classes]})
    np.savez_compressed(folder / META_FILE,
                        patient_id=np.array([i.patient_id for i in items]), dataset=np.array([i.dataset for i in items]),
                        path=np.array([i.shown_path for i in items]), view=np.array([i.view for i in items]),
                        label_name=np.array([i.label_name for i in items]), **{COPY_GROUP_KEY: groups})
    write_json(folder / PREPARE_RECORD, report)


@contextlib.contextmanager
def staging_folder(output_dir: Path, overwrite: bool):
    """A temporary folder beside ``output_dir`` to write into, put in its place in one rename when
    the block ends well, deleted when it does not: a reader (or an interrupted run) never sees a
    half-prepared folder."""
    check_output_folder_free(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
        raise_if_stopped()  # (a stop whose error a finalizer swallowed: no folder as if whole)
        _swap_in(staging, output_dir)
    except OSError as error:
        raise UserError(f"{output_dir}: cannot write the prepared folder ({error.strerror or error})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, output_dir: Path) -> None:
    """Put ``staging`` at ``output_dir``; an existing folder is moved aside first and deleted
    only once the new one is in place (put back if that fails)."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    aside = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    os.replace(output_dir, aside)
    try:
        os.replace(staging, output_dir)
    except OSError:
        os.replace(aside, output_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


PREPARED_NAMES = re.compile(rf"{IMAGES_KEY}\d+\.(npz|npy)|{LABELS_FILE}|{META_FILE}|{PREPARE_RECORD}")


def check_output_folder_free(output_dir: Path, overwrite: bool) -> None:
    """A new or empty folder, or with --overwrite one covid-ddp-prepare wrote: it holds its record
    and nothing else but its files. Any other folder is the user's, and is never replaced."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file; give a folder path")
    check_can_make(output_dir, "--output-dir")
    entries = sorted(entry.name for entry in output_dir.iterdir()) if output_dir.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise UserError(f"--output-dir {output_dir} is not empty; give a new folder, or --overwrite to replace a "
                        "folder covid-ddp-prepare wrote")
    foreign = [name for name in entries if not PREPARED_NAMES.fullmatch(name)]
    if foreign or PREPARE_RECORD not in entries:
        held = f"it holds {first_few(foreign, 3)}" if foreign else f"it has no {PREPARE_RECORD}"
        raise UserError(f"--output-dir {output_dir} is not a folder covid-ddp-prepare wrote ({held}); --overwrite "
                        "replaces only such a folder, so this one is left as it is: give a new folder")


# --- command line ----------------------------------------------------------------


STORE_FROM_BYTES = 1 << 30  # --format auto: a set this large is mapped, not copied into every process


def wants_store(choice: str, image_bytes: int) -> bool:
    return choice == "store" or (choice == "auto" and image_bytes > STORE_FROM_BYTES)
