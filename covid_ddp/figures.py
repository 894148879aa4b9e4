"""The evaluation figures, as matplotlib ``Figure`` objects.

Written to PNG by ``covid-ddp-evaluate`` and ``covid-ddp-predict --gradcam``, and logged to
TensorBoard by the trainer (``SummaryWriter.add_figure``). The Agg backend draws off-screen,
so this works on a headless training node.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.patches  # noqa: E402  (after choosing the backend)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from .data.format import CLASS_NAMES
from .destinations import FIGURE_SOFTWARE  # noqa: E402
from .files import atomic_path  # noqa: E402
from .metrics import precision_recall_points, roc_points  # noqa: E402


def roc_figure(p_covid: np.ndarray, targets: np.ndarray, auc: float | None) -> Figure:
    figure, axes = plt.subplots(figsize=(4, 4))
    if len(np.unique(targets)) == 2:
        false_positive, true_positive, _ = roc_points(p_covid, targets)
        axes.plot(false_positive, true_positive, label=f"AUC {auc:.3f}" if auc is not None else None)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    _label(axes, "1 - specificity", "sensitivity", "ROC (COVID positive)")
    return figure


def pr_figure(p_covid: np.ndarray, targets: np.ndarray, average_precision: float | None) -> Figure:
    figure, axes = plt.subplots(figsize=(4, 4))
    if targets.any():
        precision, recall = precision_recall_points(p_covid, targets)
        label = f"AP {average_precision:.3f}" if average_precision is not None else None
        axes.plot(recall, precision, label=label)
        axes.axhline(targets.mean(), linestyle="--", color="grey", linewidth=0.8)  # a random classifier
    _label(axes, "sensitivity (recall)", "PPV (precision)", "Precision-recall (COVID positive)")
    return figure


def confusion_figure(matrix: list[list[int]], threshold: float) -> Figure:
    figure, axes = plt.subplots(figsize=(4, 3.6))
    counts = np.asarray(matrix)
    axes.imshow(counts, cmap="Blues")
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    axes.set_xticks([0, 1], CLASS_NAMES)
    axes.set_yticks([0, 1], CLASS_NAMES)
    _label(axes, "predicted", "true", f"Confusion matrix (threshold {threshold:.3f})", legend=False)
    return figure


def calibration_figure(p_covid: np.ndarray, targets: np.ndarray, bins: int = 10,
                       before: tuple[np.ndarray, str] | None = None) -> Figure:
    """Observed COVID fraction per bin of predicted P(COVID); the diagonal is perfect calibration.
    ``before``: the scores before temperature scaling, and their label, drawn as a second curve."""
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    curves = [(before[0], before[1], "lightgrey")] if before is not None else []
    for scores, label, colour in [*curves, (p_covid, "model" if before is None else "shipped (calibrated)", None)]:
        index = np.minimum((scores * bins).astype(int), bins - 1)
        filled = [b for b in range(bins) if (index == b).any()]
        axes.plot([scores[index == b].mean() for b in filled], [targets[index == b].mean() for b in filled],
                  marker="o", label=label, color=colour)
    _label(axes, "predicted P(COVID)", "observed COVID fraction", "Calibration")
    if before is not None:
        axes.legend(fontsize=7, loc="upper left")
    return figure


def overlay_figure(image: np.ndarray, heatmap: np.ndarray, title: str) -> Figure:
    """The radiograph at its own size, and the Grad-CAM heatmap (any size: stretched over it)
    with a colour bar of its 0-1 scale."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(6, 2.9))
    extent = (0, image.shape[1], image.shape[0], 0)
    for axes in (left, right):
        axes.imshow(image, cmap="gray", vmin=0, vmax=255, extent=extent)
        axes.axis("off")
    shown = right.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent, interpolation="bilinear")
    figure.colorbar(shown, ax=right, fraction=0.046, pad=0.04).set_label("Grad-CAM (0-1)", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def audit_figure(images, targets, with_marks, without_border, mean_heatmap, lung_box, report: dict,
                 seed: int) -> Figure:
    """covid-ddp-audit's figure: a non-COVID image as scored, with marks, with its border hidden;
    the mean Grad-CAM heatmap with the lung box; the source probe against its pixel reference."""
    figure, axes = plt.subplots(1, 5, figsize=(16, 3.4))
    plain = np.flatnonzero(targets == 0)
    example = images[plain[:1]] if len(plain) else images[:1]
    for ax, shown, title in zip(axes[:3], (example, with_marks(example, seed), without_border(example)),
                                ("a non-COVID test image", "with marks stamped", "border hidden")):
        ax.imshow(shown[0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if mean_heatmap is not None:
        shown = axes[3].imshow(mean_heatmap, cmap="jet", vmin=0, vmax=max(float(mean_heatmap.max()), 1e-6))
        figure.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.04).set_label("mean Grad-CAM", fontsize=8)
        rows, columns = lung_box(mean_heatmap.shape[-1])
        axes[3].add_patch(matplotlib.patches.Rectangle((columns.start - 0.5, rows.start - 0.5), columns.stop - columns.start,
                                                       rows.stop - rows.start, fill=False, color="white", linewidth=1.2))
    share = report["gradcam"]["inside_share"]
    axes[3].set_title(f"mean Grad-CAM; {'n/a' if share is None else f'{share:.2f}'} inside the box", fontsize=9)
    axes[3].axis("off")
    probes = {name: entry for name, entry in report["source_probe"].items()
              if isinstance(entry, dict) and "roc_auc" in entry}
    positions = np.arange(len(probes))
    axes[4].bar(positions - 0.2, [e["roc_auc"] for e in probes.values()], 0.4, label="model features")
    axes[4].bar(positions + 0.2, [e["pixels_roc_auc"] for e in probes.values()], 0.4, label="pixels")
    axes[4].axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axes[4].set_xticks(positions, list(probes) or [])
    axes[4].set_ylim(0, 1)
    _label(axes[4], "class", "ROC AUC", "source probe" if probes else "source probe: n/a", legend=bool(probes))
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    """Write a PNG atomically and free the figure (pyplot keeps every open figure alive). Its
    Software tag marks it as covid_ddp's: a later run may replace it (destinations.is_own_figure)."""
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": FIGURE_SOFTWARE})
    plt.close(figure)


def _label(axes, x_label: str, y_label: str, title: str, legend: bool = True) -> None:
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize=10)
    if legend and axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
