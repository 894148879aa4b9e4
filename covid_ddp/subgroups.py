"""Results per subgroup: a row per value of each low-cardinality meta.npz column (sex, view,
source, ...; age in bands), with n per class, ROC AUC where both classes are present, sensitivity
and specificity at the run's threshold, and their 95% intervals (of patients where patients
repeat). What reviewers of a medical imaging paper ask for (CLAIM item 36), and every fairness
check. A row with too few images to say anything is kept, and marked so.

    table = subgroup_table(p_covid, targets, meta, rows, threshold, bootstrap=1000, seed=1)
    table["sex"]["F"]["roc_auc"], table["age"]["60-79"]["too_few"]
"""

from __future__ import annotations

import numpy as np

from .data.splits import as_text
from .errors import UserError
from .metrics import binary_metrics

SUBGROUP_METRICS = ("roc_auc", "sensitivity", "specificity")
# Ids, files, bookkeeping, the label itself, and where a public set's files came from (real-cxr's
# repository commit and licence): none of them a group of patients.
NOT_SUBGROUPS = {"patient_id", "path", "duplicate_group", "label_name", "commit", "license"}
MAX_VALUES = 12  # a column with more distinct values (an id, a date) is no subgroup
MIN_IMAGES = 20  # fewer images in a row: too few to say anything (kept, marked)
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
SOURCE_COLUMN = "dataset"  # meta.npz's name for the source


def subgroup_columns(meta: dict | None, rows: np.ndarray, chosen: list[str] | None = None) -> dict[str, np.ndarray]:
    """Column -> each of ``rows``' subgroup value (text; ages in bands). ``chosen`` (--subgroups)
    names them, 'source' for meta.npz's 'dataset'; by default every column that makes subgroups."""
    meta = meta or {}
    names = {("source" if key == SOURCE_COLUMN else key): key for key in meta if key not in NOT_SUBGROUPS}
    if chosen is not None:
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise UserError(f"--subgroups {','.join(unknown)}: no such meta.npz column; the data holds "
                            f"{', '.join(sorted(names)) or 'none'}")
    columns = {}
    for name in (chosen if chosen is not None else sorted(names)):
        values = _values(np.asarray(meta[names[name]])[rows], name)
        if chosen is not None or 1 < len(set(values.tolist())) <= MAX_VALUES:
            columns[name] = values
    return columns


def _values(column: np.ndarray, name: str) -> np.ndarray:
    """Text values; ages (a number column named age) in bands, unknown ones as 'unknown'."""
    if name == "age" and column.dtype.kind in "iuf":
        bands = np.full(len(column), "unknown", dtype=object)
        for low, high, label in AGE_BANDS:
            bands[(column >= low) & (column < high)] = label
        return bands.astype(str)
    text = as_text(column)
    return np.where(text == "", "unknown", text)


def subgroup_table(p_covid: np.ndarray, targets: np.ndarray, columns: dict[str, np.ndarray], threshold: float,
                   bootstrap: int = 0, seed: int = 0, patients: np.ndarray | None = None) -> dict:
    """Column -> value -> {n, n_per_class, roc_auc, sensitivity, specificity, ci95, too_few}."""
    table = {}
    for name, values in columns.items():
        table[name] = {}
        for value in sorted(set(values.tolist())):
            chosen = values == value
            too_few = int(chosen.sum()) < MIN_IMAGES
            scored = binary_metrics(p_covid[chosen], targets[chosen], threshold=threshold,
                                    bootstrap=0 if too_few else bootstrap, seed=seed,
                                    groups=None if patients is None else patients[chosen])
            table[name][value] = {"n": scored["n"], "n_per_class": scored["n_per_class"],
                                  **{metric: scored[metric] for metric in SUBGROUP_METRICS},
                                  "ci95": {metric: scored.get("ci95", {}).get(metric) for metric in SUBGROUP_METRICS},
                                  "too_few": too_few}
    return table
