"""Is the disease confounded with the source? Images and patients per source x class, and one
warning line when a source holds a single class, or when every image comes from one source.

    table = source_table(sources, targets, patients)     # {"hannover": {"covid": {...}, ...}, ...}
    print(format_table(table)); warning = confounding_warning(table)

In the public COVID sets, hospitals sent one class each (real-cxr: hannover COVID only, kermany
and nih non-COVID only). A model trained on them can score well by recognising the hospital,
and nothing in its test metrics shows it: training says so at its start, and the report and
the model card repeat it. Silent for data without a source column (meta.npz 'dataset').
"""

from __future__ import annotations

import numpy as np

CLASSES = ("non_covid", "covid")
CLASS_LABELS = {"non_covid": "non-COVID", "covid": "COVID"}


def source_table(sources: np.ndarray, targets: np.ndarray, patients: np.ndarray | None = None) -> dict:
    """Source -> class -> {"images": n, "patients": n (None without patient ids)}, sources sorted."""
    sources, targets = np.asarray(sources).astype(str), np.asarray(targets)
    table = {}
    for source in sorted(set(sources.tolist())):
        table[source] = {}
        for label, name in enumerate(CLASSES):
            chosen = (sources == source) & (targets == label)
            count = None if patients is None else int(len(np.unique(np.asarray(patients)[chosen])))
            table[source][name] = {"images": int(chosen.sum()), "patients": count}
    return table


def table_of(meta: dict | None, targets: np.ndarray, rows: np.ndarray) -> dict | None:
    """The table of ``rows`` from meta.npz's 'dataset' (and 'patient_id'); None without sources."""
    if meta is None or "dataset" not in meta:
        return None
    from .splits import patient_ids

    return source_table(np.asarray(meta["dataset"]).astype(str)[rows], targets[rows], patient_ids(meta, rows))


def single_class_sources(table: dict | None) -> dict[str, str]:
    """Source -> the one class it holds ("COVID"/"non-COVID"), for every source holding one class."""
    if not table or len(table) < 2:
        return {}
    lonely = {}
    for source, classes in table.items():
        held = [name for name in CLASSES if classes[name]["images"]]
        if len(held) == 1:
            lonely[source] = CLASS_LABELS[held[0]]
    return lonely


def confounding_warning(table: dict | None) -> str | None:
    """The one line, or None when every source holds both classes (or there is one source)."""
    lonely = single_class_sources(table)
    if not lonely:
        return None
    listed = ", ".join(f"{source}: {label} only" for source, label in lonely.items())
    return (f"{listed}: a model can score well by recognising the source; see covid-ddp-report and "
            "covid-ddp-audit")


def single_source_warning(sources) -> str | None:
    """The one line when every image comes from one source (the names of the sources present;
    None for several, or for data whose sources are not known)."""
    names = sorted(set(sources))
    if len(names) != 1:
        return None
    return (f"every image comes from one source ({names[0]}): the test figures measure the model on that source "
            "alone, and say nothing of other hospitals or scanners, nor whether it reads the source's own marks; give "
            "each image its source (a 'source' column for covid-ddp-prepare) or score an outside folder with "
            "covid-ddp-evaluate --data-dir OTHER --split all")


def format_table(table: dict, title: str = "images (patients) per source and class") -> str:
    """A fixed-width table for the console."""
    width = max(len("source"), *map(len, table)) + 2

    def cell(entry: dict) -> str:
        return f"{entry['images']}" + ("" if entry["patients"] is None else f" ({entry['patients']})")

    lines = [title, f"{'source':<{width}}{'COVID':>16}{'non-COVID':>16}"]
    for source, classes in table.items():
        lines.append(f"{source:<{width}}{cell(classes['covid']):>16}{cell(classes['non_covid']):>16}")
    return "\n".join(lines)


def markdown_table(table: dict) -> str:
    """The same as a Markdown table: images (patients)."""
    lines = ["| source | COVID images (patients) | non-COVID images (patients) |", "| --- | --- | --- |"]
    for source, classes in table.items():
        cells = [f"{c['images']}" + ("" if c["patients"] is None else f" ({c['patients']})")
                 for c in (classes["covid"], classes["non_covid"])]
        lines.append(f"| {source} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
