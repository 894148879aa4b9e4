"""The shortcut audit read as one verdict: each measurement on a stated scale, and one summary line.

Each reading is ``none``, ``weak`` or ``strong`` (a sign that the model's calls rest on that
shortcut). The thresholds were set on models whose shortcut is known (tests/test_shortcuts.py: a
model reading the border, one reading marks, features that encode the source, heat in a corner)
and on models that have none; between the two a reading is ``weak``. Where two measurements of one
place disagree (hiding the border changes nothing, yet the Grad-CAM heat is not on the lungs), the
summary says so and where to look.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("none", "weak", "strong")
# marks: the share of non-COVID calls the marks turn COVID, and the mean change of P(COVID)
MARKS_NONE, MARKS_STRONG = 0.02, 0.10
# border: the change of ROC AUC when it is hidden, and the mean |change| of P(COVID)
BORDER_AUC_NONE, BORDER_AUC_STRONG = 0.02, 0.05
BORDER_CHANGE_NONE, BORDER_CHANGE_STRONG = 0.05, 0.15
# source probe: the ROC AUC of telling the sources apart from the model's features, within a class
PROBE_NONE, PROBE_STRONG = 0.70, 0.85
# Grad-CAM: the share of heat inside the lung box, against an even spread (uniform_share)
HEAT_ON_LUNGS, HEAT_OFF_LUNGS = 0.05, -0.10


@dataclass(frozen=True)
class Reading:
    level: str  # one of LEVELS
    text: str  # what the value means, with the scale it was read on


def read_marks(marks: dict) -> Reading:
    share, change = marks["flip_share"] or 0.0, marks["mean_change"]
    scale = f"none under {MARKS_NONE:.2f} flipped and mean change, strong from {MARKS_STRONG:.2f}"
    if share >= MARKS_STRONG or change >= MARKS_STRONG:
        return Reading("strong", f"strong: marks alone turn calls COVID ({scale})")
    if share < MARKS_NONE and abs(change) < MARKS_NONE:
        return Reading("none", f"none: the calls do not rest on marks ({scale})")
    return Reading("weak", f"weak: marks move some calls ({scale})")


def read_border(border: dict) -> Reading:
    auc_change, change = border["roc_auc_change"], border["mean_abs_change"]
    drop = -auc_change if auc_change is not None else 0.0
    scale = (f"none: AUC within {BORDER_AUC_NONE:.2f} and mean change under {BORDER_CHANGE_NONE:.2f}; strong: AUC "
             f"down {BORDER_AUC_STRONG:.2f} or mean change {BORDER_CHANGE_STRONG:.2f}")
    if drop >= BORDER_AUC_STRONG or change >= BORDER_CHANGE_STRONG:
        return Reading("strong", f"strong: the calls need the border, where labels and markers lie ({scale})")
    if abs(drop) < BORDER_AUC_NONE and change < BORDER_CHANGE_NONE:
        return Reading("none", f"none: the border holds nothing the model needs ({scale})")
    return Reading("weak", f"weak: the border moves the scores ({scale})")


def read_probe(entry: dict) -> Reading:
    auc, pixels = entry["roc_auc"], entry["pixels_roc_auc"]
    scale = f"0.5: nothing; none under {PROBE_NONE:.2f}, strong from {PROBE_STRONG:.2f}; pixels alone {pixels:.3f}"
    if auc >= PROBE_STRONG:
        return Reading("strong", f"strong: the features tell the sources apart ({scale})")
    if auc < PROBE_NONE:
        return Reading("none", f"none: little of the source in the features ({scale})")
    return Reading("weak", f"weak: some of the source in the features ({scale})")


def read_gradcam(heat: dict) -> Reading | None:
    share, even = heat["inside_share"], heat["uniform_share"]
    if share is None:
        return None
    scale = f"an even spread puts {even:.2f} there; none from {even + HEAT_ON_LUNGS:.2f}, strong under {even + HEAT_OFF_LUNGS:.2f}"
    if share >= even + HEAT_ON_LUNGS:
        return Reading("none", f"none: the heat is on the lungs ({scale})")
    if share < even + HEAT_OFF_LUNGS:
        return Reading("strong", f"strong: most heat lies outside the lung box ({scale})")
    return Reading("weak", f"weak: no more heat on the lungs than elsewhere ({scale})")


def readings(report: dict) -> dict[str, Reading]:
    """Measurement -> its reading (those the audit could make)."""
    found = {}
    if "skipped" not in report["marks"]:
        found["marks"] = read_marks(report["marks"])
    found["border"] = read_border(report["border"])
    probe = report["source_probe"]
    for name, entry in (probe.items() if "skipped" not in probe else []):
        if "skipped" not in entry:
            found[f"source probe, {name}"] = read_probe(entry)
    heat = read_gradcam(report["gradcam"])
    if heat is not None:
        found["Grad-CAM"] = heat
    return found


def verdict(report: dict) -> str:
    """One line: what the audit found, where two readings disagree, and what was not measured."""
    found = readings(report)
    strong = [name for name, reading in found.items() if reading.level == "strong"]
    weak = [name for name, reading in found.items() if reading.level == "weak"]
    if strong:
        line = f"Signs of a shortcut: {', '.join(strong)}" + (f" (weaker: {', '.join(weak)})" if weak else "") + "."
    elif weak:
        line = f"Weak signs only: {', '.join(weak)}."
    else:
        line = f"No sign of the shortcuts probed ({', '.join(found)}); not a proof that the model uses none."
    heat, border = found.get("Grad-CAM"), found["border"]
    if heat is not None and heat.level != "none" and border.level == "none":
        line += (" The border test and Grad-CAM disagree: hiding the border changes little, yet the heat is not on "
                 "the lungs; look at audit.png's mean heatmap (heat along the edges or in the corners) and at "
                 "covid-ddp-predict --gradcam overlays of the images it calls COVID.")
    if not any(name.startswith("source probe") for name in found):
        line += " The source probe could not run (one source, or too few images of a source): see the table."
    return line
