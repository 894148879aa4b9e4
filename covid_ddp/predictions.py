"""``predictions.csv``: one row per scored image, the table a reviewer asks for.

Written beside ``metrics.json`` by training (the test split) and beside ``evaluation.json`` by
covid-ddp-evaluate. Each row names the image (its row in the data, its file where the data records
one, its patient, source and the other per-image columns of meta.npz), its label, P(COVID), the call
and the threshold: every figure of the JSON can be recomputed from it (tests/test_predictions.py
does, with scikit-learn).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .data.format import CLASS_NAMES
from .data.splits import as_text
from .files import atomic_path

PREDICTIONS_FILE = "predictions.csv"
# meta.npz columns with a column name of their own here, and those that are bookkeeping, not the image's.
NAMED_META = {"path": "path", "patient_id": "patient", "dataset": "source"}
OMITTED_META = {"duplicate_group"}


def predictions_table(rows: np.ndarray, p_covid: np.ndarray, targets: np.ndarray, threshold: float,
                      meta: dict | None) -> str:
    """The CSV text: ``row, path, patient, source, <other meta columns>, label, p_covid, call, threshold``."""
    meta = meta or {}
    extra = sorted(key for key in meta if key not in NAMED_META and key not in OMITTED_META)
    columns = {"row": np.asarray(rows)}
    for key, name in NAMED_META.items():
        columns[name] = as_text(np.asarray(meta[key]))[rows] if key in meta else np.full(len(rows), "")
    for key in extra:
        columns[key] = as_text(np.asarray(meta[key]))[rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, "label", "p_covid", "call", "threshold"])
    calls = np.asarray(p_covid) >= threshold
    for index in range(len(rows)):
        writer.writerow([*(values[index] for values in columns.values()), CLASS_NAMES[int(targets[index])],
                         f"{float(p_covid[index]):.9g}", CLASS_NAMES[int(calls[index])], f"{threshold:.9g}"])
    return buffer.getvalue()


def write_predictions(folder: Path, table: str) -> Path:
    """``table`` as ``folder``/predictions.csv, whole or not at all."""
    path = Path(folder) / PREDICTIONS_FILE
    with atomic_path(path) as tmp:
        Path(tmp).write_text(table)
    return path
