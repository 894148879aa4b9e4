"""Train / validation / test splits that do not leak.

Three ways to hold data out, all deterministic (random_state 42) and recorded in the run's
``splits.npz`` and ``config.json``:

- image level (the original's): a stratified 70/30 split of the images, then validation
  carved from the training part;
- patient level (``--group-split``): every image of a patient lands in the same part, so
  follow-up films of one person cannot be in train and test. Patients are stratified by
  whether any of their images is COVID; ``--test-size`` and ``--val-size`` are then
  fractions of patients, and the image fractions come out close to them;
- one source held out (``--holdout-source NAME``): every image of that source is the test
  set (leave-one-source-out), the rest is split into train and validation (less any copy of a
  test image: it would be learned, then scored);

Copies of one image (exact, or near ones that covid-ddp-prepare found: meta.npz
``duplicate_group``) always land in one part, as a patient's images do: a copy in train and
test scores the model on an image it learned. A set without copies splits as the original did.

``--exclude-source NAME,...`` drops sources before any of that (e.g. the paediatric
``kermany`` images of the real-cxr set for an adult-only evaluation: docs/real-cxr.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .duplicates import first_copies
from .format import COPY_GROUP_KEY
from .stratified import stratified_split
from .tensors import blank_rows

SPLIT_SEED = 42  # the original's random_state


@dataclass
class Split:
    """Row indices (into the data directory's arrays) of each part; ``val`` is empty with --val-size 0."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    copy_groups: tuple[int, int] = (0, 0)  # (groups of copies kept in one part, images in them)

    def as_arrays(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class SplitPlan:
    """How to split: what ``TrainConfig`` says, in one place for the trainer and the evaluator."""

    test_size: float = 0.3
    val_size: float = 0.1
    group_split: bool = False
    holdout_source: str | None = None
    exclude_sources: tuple[str, ...] = ()

    def needs_meta(self) -> bool:
        return self.group_split or self.holdout_source is not None or bool(self.exclude_sources)


def make_split(targets: np.ndarray, plan: SplitPlan, meta: dict | None = None,
               copies: np.ndarray | None = None) -> Split:
    """The split ``plan`` asks for; ``meta`` holds per-image ``patient_id`` and ``dataset`` arrays,
    ``copies`` each image's copy group (``split_groups``), kept in one part."""
    _check_meta(plan, meta, len(targets))
    meta = _as_text(meta)
    rows = np.arange(len(targets))
    if plan.exclude_sources:
        rows = rows[~np.isin(meta["dataset"], plan.exclude_sources)]
    groups = _joined([meta["patient_id"] if plan.group_split else None, copies])
    if plan.holdout_source is not None:
        held_out = meta["dataset"][rows] == plan.holdout_source
        rest, test = rows[~held_out], rows[held_out]
        if groups is not None:  # a copy of a test image in another source is trained on by no part
            rest = rest[~np.isin(groups[rest], groups[test])]
    else:
        rest, test = _hold_out(rows, targets, groups, plan.test_size, "--test-size")
    train, val = rest, np.empty(0, dtype=np.int64)
    if plan.val_size > 0:
        train, val = _hold_out(rest, targets, groups, plan.val_size, "--val-size")
    return Split(np.sort(train), np.sort(val), np.sort(test), copy_group_count(copies))


def split_indices(targets: np.ndarray, test_size: float, val_size: float) -> Split:
    """The image-level split (the original's 70/30 with random_state 42, then validation from train)."""
    return make_split(targets, SplitPlan(test_size, val_size))


def split_groups(data) -> np.ndarray | None:
    """Each image's copy group: meta.npz's ``duplicate_group`` where covid-ddp-prepare wrote one
    (exact and near copies), else the exact copies found now (one pass over the pixels); None when
    no image has a copy, so that such a set splits image by image as the original did."""
    meta = data.meta or {}
    if COPY_GROUP_KEY in meta and len(meta[COPY_GROUP_KEY]) == len(data.images):
        groups = np.asarray(meta[COPY_GROUP_KEY]).astype(np.int64)
    else:
        groups = first_copies(data.images)
    # Blank images (one gray level) are all alike without being copies of a radiograph: each stays
    # its own, and training names them as blank.
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    copied = np.flatnonzero(sizes[inverse] > 1)
    blank = blank_rows(data.images, copied)
    groups[blank] = blank
    return groups if len(np.unique(groups)) < len(groups) else None


def copy_group_count(groups: np.ndarray | None) -> tuple[int, int]:
    """(groups of two or more copies, images in them)."""
    if groups is None:
        return 0, 0
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    return int((sizes > 1).sum()), int(sizes[sizes > 1].sum())


def _joined(labelings: list[np.ndarray | None]) -> np.ndarray | None:
    """One group per set of rows linked by any of ``labelings`` (a patient's images and their copies
    elsewhere are one group), or None when there is none."""
    given = [np.unique(labels, return_inverse=True)[1] for labels in labelings if labels is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    from scipy.sparse import coo_matrix  # (scikit-learn's own dependency)
    from scipy.sparse.csgraph import connected_components

    count = len(given[0])
    edges = [(np.arange(count), count + offset + labels)  # row -> a node for its label in each labeling
             for offset, labels in zip(np.cumsum([0] + [labels.max() + 1 for labels in given[:-1]]), given)]
    sources, targets = np.concatenate([e[0] for e in edges]), np.concatenate([e[1] for e in edges])
    size = count + sum(int(labels.max()) + 1 for labels in given)
    graph = coo_matrix((np.ones(len(sources)), (sources, targets)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:count]


def _hold_out(rows: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, fraction: float,
              flag: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) rows: ``fraction`` of the images, or of the groups (patients, copies) when
    ``groups`` is given."""
    counts = np.bincount(targets[rows], minlength=2)
    if (counts < 2).any():
        raise UserError(f"the data holds {counts[0]} non-COVID and {counts[1]} COVID images; "
                        "a stratified split needs at least 2 of each class")
    try:
        if groups is None:
            return stratified_split(rows, fraction, SPLIT_SEED, stratify=targets[rows])
        patients, patient_of_row = np.unique(groups[rows], return_inverse=True)
        has_covid = np.zeros(len(patients), dtype=np.int64)
        np.maximum.at(has_covid, patient_of_row, targets[rows])
        _, held_patients = stratified_split(np.arange(len(patients)), fraction, SPLIT_SEED, stratify=has_covid)
        held = np.isin(patient_of_row, held_patients)
        return rows[~held], rows[held]
    except ValueError as error:
        unit = "groups of a patient's images and their copies" if groups is not None else "images"
        raise UserError(f"cannot split {len(rows)} images with {flag} {fraction} over {unit}: {error}")


def _as_text(meta: dict | None) -> dict | None:
    """Ids and source names compared as text: a meta.npz may store them as numbers or bytes."""
    if meta is None:
        return None
    return {key: as_text(values) for key, values in meta.items() if key in ("patient_id", "dataset")}


def _check_meta(plan: SplitPlan, meta: dict | None, count: int) -> None:
    if not plan.needs_meta():
        return
    wanted = [("--group-split", "patient_id")] if plan.group_split else []
    if plan.holdout_source is not None or plan.exclude_sources:
        wanted.append(("--holdout-source/--exclude-source", "dataset"))
    for flag, key in wanted:
        if meta is None or key not in meta:
            raise UserError(f"{flag} needs per-image '{key}' values: put a meta.npz with a '{key}' array "
                            "(one entry per image) next to the data files")
        if len(meta[key]) != count:
            raise UserError(f"meta.npz: '{key}' has {len(meta[key])} entries for {count} images")
    meta = _as_text(meta)
    if "dataset" in meta:
        known = sorted(set(meta["dataset"].tolist()))
        for name in [plan.holdout_source, *plan.exclude_sources]:
            if name is not None and name not in known:
                raise UserError(f"no images of source '{name}' in meta.npz 'dataset'; the sources are: "
                                f"{', '.join(known)}")
        if plan.holdout_source in plan.exclude_sources:
            raise UserError(f"--holdout-source {plan.holdout_source} is also excluded by --exclude-source")


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
