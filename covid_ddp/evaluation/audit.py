"""The shortcut audit: how much a trained model's calls rest on shortcuts instead of the lungs
(``audit``; covid-ddp-audit runs it on a run's split).

Four measurements on the chosen images (default: the run's test split), each a number a
reader can compare between models (the same images, the same seed):

- **marks**: publication marks (arrows, letters, boxes, border bands: those ``--augment-marks``
  draws) stamped on every non-COVID image. Mean change of P(COVID), and the share of the
  images called non-COVID that the marks turn into COVID calls. A model that reads "mark =
  COVID" flips them.
- **border**: the outer eighth of the image on each side replaced by the median grey inside it.
  Change of ROC AUC and mean |change of P(COVID)|. Labels, markers and collimation edges
  live there; the lungs do not.
- **source probe**: a logistic regression on the model's penultimate features (FC 512, their
  first 32 principal components) predicting the source, within each class, cross-validated
  by patient (sources with >= 20 images of the class). ROC AUC 0.5: the features carry nothing of the hospital beyond the
  disease; near 1: they tell the hospitals apart. The same probe on the raw pixels (16x16)
  is the reference: how separable the sources are before any training.
- **where it looks**: the share of each image's Grad-CAM heat inside the central box that
  leaves out the same outer eighth (56% of the area: a heatmap spread evenly puts 0.56 there),
  averaged over up to 256 of the images.

Writes ``audit.json``, ``audit.md`` and ``audit.png`` to ``--output-dir`` (default:
``audit-<split>`` beside the weights), and brings the run's ``model_card.md`` up to date.
covid-ddp-train runs it on the test split at its end when that adds under 10% to the run's work. These are
probes of known shortcuts, not a proof that none is used. Not for clinical use.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..cli import say
from ..data.format import to_binary
from ..data.marks import add_marks
from ..data.splits import patient_ids, source_names
from ..errors import first_line
from ..files import atomic_path, write_json
from ..metrics import roc_auc
from ..models.gradcam import gradcam
from ..models.inference import predict
from ..models.loading import inference_model, load_model
from ..models.net import watch_penultimate
from ..models.weights import decision_threshold
from ..seeding import stream_seed
from .audit_reading import readings, verdict
from .model_card import summary_rows

EDGE_FRACTION = 1 / 8  # the outer band (border test) and what the lung box leaves out (Grad-CAM)
PROBE_MIN_IMAGES = 20  # a source enters the probe of a class with at least this many images of it
PROBE_FOLDS = 5
PIXEL_PROBE_SIZE = 16  # the reference probe's images: 16x16 averages of the pixels
PROBE_COMPONENTS = 32  # the probe reads the first principal components (fitted per fold): ~20x faster than 512
GRADCAM_IMAGES = 256  # the Grad-CAM share is a mean: a sample of this many images measures it
AUDIT_IMAGES = 20_000  # a larger split is audited on a random sample this large: every reading is a rate or
# an AUC, measured as well on 20,000 images as on 400,000 (the probe's folds alone would take an hour there)
# covid-ddp-train --audit auto: the largest share of the run's work the audit may add. Counted in
# image passes through the model, not timed, so that one command writes the same folder on any
# machine under any load.
AUDIT_SHARE = 0.10
FIXED_PASSES = 2500  # the probe's fits and the figure: about 2 s, the time of 2,500 Net passes at 64 px on 2 CPU cores
AUDIT_FILES = ("audit.json", "audit.md", "audit.png")


def audit(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, threshold: float, sources: np.ndarray | None = None,
          patients: np.ndarray | None = None, seed: int = 0) -> dict:
    """The four measurements on raw-pixel ``images`` (N, S, S) uint8 with the weights of ``model``
    (as loaded: Grad-CAM hooks its ``gradcam_layer``; the rest runs the folded copy covid-ddp-predict
    runs)."""
    started = time.perf_counter()
    model = model.eval()
    scorer = inference_model(model)
    p_covid, features = predict_with_features(scorer, images)
    result = {"images": int(len(targets)), "covid": int(targets.sum()), "threshold": float(threshold),
              "marks": marks_test(scorer, images, targets, p_covid, threshold, seed),
              "border": border_test(scorer, images, targets, p_covid, threshold),
              "source_probe": source_probe(features, images, targets, sources, patients, seed),
              "gradcam": gradcam_mass(model, images, targets, seed)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def audit_passes(test_images: int) -> int:
    """The audit's work in image passes: scoring, the marks and the border test (a pass each),
    Grad-CAM on a sample (about 3 passes an image), and the probe and figure (FIXED_PASSES)."""
    audited = min(test_images, AUDIT_IMAGES)
    return 3 * audited + 3 * min(audited, GRADCAM_IMAGES) + FIXED_PASSES


def training_passes(train_images: int, val_images: int, epochs: int) -> int:
    """A run's work in image passes: a training step costs about three (forward and backward), a
    validation image one."""
    return epochs * (3 * train_images + val_images)


# --- the four measurements ---------------------------------------------------------------------


def with_marks(images: np.ndarray, seed: int) -> np.ndarray:
    """Every image with one to four marks, as uint8 (the same marks for the same seed)."""
    generator = torch.Generator().manual_seed(stream_seed(seed, "audit"))
    marked = add_marks(torch.as_tensor(images).float().unsqueeze(1), generator, probability=1.0)
    return marked.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def marks_test(model, images, targets, p_covid, threshold: float, seed: int) -> dict:
    rows = np.flatnonzero(targets == 0)
    if not len(rows):
        return {"skipped": "no non-COVID image to stamp"}
    marked = predict(model, with_marks(images[rows], seed))
    before = p_covid[rows]
    called_non_covid = before < threshold
    flipped = called_non_covid & (marked >= threshold)
    return {"images": int(len(rows)), "mean_change": float((marked - before).mean()),
            "called_non_covid": int(called_non_covid.sum()), "flipped_to_covid": int(flipped.sum()),
            "flip_share": float(flipped.sum() / called_non_covid.sum()) if called_non_covid.any() else None}


def edge_width(size: int) -> int:
    return max(1, round(size * EDGE_FRACTION))


def without_border(images: np.ndarray) -> np.ndarray:
    """The outer band of every image set to the median grey of the image's inside: the band's own
    pixels (a marker's brightness, say) must not leak back through the grey that replaces them."""
    band = edge_width(images.shape[-1])
    inside = np.zeros(images.shape[-2:], dtype=bool)
    inside[band:-band, band:-band] = True
    medians = np.median(images[:, inside], axis=1).astype(images.dtype)[:, None, None]
    return np.where(inside, images, medians)


def border_test(model, images, targets, p_covid, threshold: float) -> dict:
    hidden = predict(model, without_border(images))
    before, after = roc_auc(p_covid, targets), roc_auc(hidden, targets)
    return {"roc_auc_before": before, "roc_auc_after": after,
            "roc_auc_change": None if before is None or after is None else after - before,
            "mean_abs_change": float(np.abs(hidden - p_covid).mean()),
            "calls_changed": float(((hidden >= threshold) != (p_covid >= threshold)).mean())}


@torch.inference_mode()
def predict_with_features(model: torch.nn.Module, images: np.ndarray,
                          batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P(COVID) and the penultimate features (``models.net.watch_penultimate``: what the last layer
    decides from) of every image, in one pass."""
    captured = []
    hook = watch_penultimate(model, captured)
    try:
        p_covid = predict(model, images, batch_size)
    finally:
        hook.remove()
    features = torch.cat(captured).numpy() if captured else np.empty((0, 0), dtype=np.float32)
    return p_covid, features


def pixel_features(images: np.ndarray) -> np.ndarray:
    """16x16 block means of the pixels: the reference probe's input."""
    size = images.shape[-1]
    block = size // PIXEL_PROBE_SIZE
    cut = images[:, :block * PIXEL_PROBE_SIZE, :block * PIXEL_PROBE_SIZE].astype(np.float32)
    return cut.reshape(len(images), PIXEL_PROBE_SIZE, block, PIXEL_PROBE_SIZE, block).mean(axis=(2, 4)).reshape(len(images), -1)


def source_probe(features, images, targets, sources, patients, seed: int) -> dict:
    """Per class, how well the sources of that class can be told apart from the model's features."""
    if sources is None:
        return {"skipped": "no source column (meta.npz 'dataset')"}
    pixels = pixel_features(images)
    by_class = {}
    for label, name in ((1, "COVID"), (0, "non-COVID")):
        rows = np.flatnonzero(targets == label)
        names, counts = np.unique(sources[rows], return_counts=True)
        kept = names[counts >= PROBE_MIN_IMAGES]
        if len(kept) < 2:
            by_class[name] = {"skipped": f"fewer than 2 sources with >= {PROBE_MIN_IMAGES} {name} images",
                              "sources": {str(n): int(c) for n, c in zip(names, counts)}}
            continue
        if patients is not None:  # folds hold whole patients: each source needs a patient in every fold
            kept = [n for n in kept if len(np.unique(patients[rows][sources[rows] == n])) >= PROBE_FOLDS]
        if len(kept) < 2:
            by_class[name] = {"skipped": f"fewer than 2 sources with >= {PROBE_MIN_IMAGES} {name} images of >= "
                              f"{PROBE_FOLDS} patients", "sources": {str(n): int(c) for n, c in zip(names, counts)}}
            continue
        rows = rows[np.isin(sources[rows], kept)]
        groups = None if patients is None else patients[rows]
        by_class[name] = {"sources": {str(n): int((sources[rows] == n).sum()) for n in kept},
                          "roc_auc": _probe_auc(features[rows], sources[rows], groups, seed),
                          "pixels_roc_auc": _probe_auc(pixels[rows], sources[rows], groups, seed)}
    return by_class


def _probe_auc(features: np.ndarray, sources: np.ndarray, groups: np.ndarray | None, seed: int) -> float:
    """Cross-validated ROC AUC (one source against the rest, averaged) of a logistic regression;
    folds keep a patient's images together, so it cannot recognise the person instead."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, y = np.unique(sources, return_inverse=True)
    folds = min(PROBE_FOLDS, int(np.bincount(y).min()))  # (source_probe keeps sources of >= PROBE_FOLDS patients)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if groups is not None else \
        StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = np.zeros((len(y), len(classes)))
    for train, test in splitter.split(features, y, groups):
        components = min(PROBE_COMPONENTS, len(train), features.shape[1])
        probe = make_pipeline(StandardScaler(), PCA(components, random_state=seed), LogisticRegression(max_iter=1000))
        probe.fit(features[train], y[train])
        scores[np.ix_(test, probe.classes_)] = probe.predict_proba(features[test])
    if len(classes) == 2:
        return float(roc_auc_score(y, scores[:, 1]))
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro"))


def lung_box(size: int) -> tuple[slice, slice]:
    edge = edge_width(size)
    return slice(edge, size - edge), slice(edge, size - edge)


def gradcam_mass(model, images, targets, seed: int) -> dict:
    """Mean share of the Grad-CAM heat inside the lung box, per class and over all images (a
    sample of GRADCAM_IMAGES of them, the same for the same seed)."""
    if len(images) > GRADCAM_IMAGES:
        chosen = np.sort(np.random.default_rng(stream_seed(seed, "audit")).choice(len(images), GRADCAM_IMAGES, replace=False))
        images, targets = images[chosen], targets[chosen]
    heatmaps = gradcam(model, images)
    box = lung_box(images.shape[-1])
    total = heatmaps.reshape(len(heatmaps), -1).sum(axis=1)
    inside = heatmaps[:, box[0], box[1]].reshape(len(heatmaps), -1).sum(axis=1)
    hot = total > 0  # a heatmap of zeros (no positive evidence at all) has no mass to share
    share = np.where(hot, inside / np.where(hot, total, 1), np.nan)
    area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start) / images.shape[-1] ** 2

    def mean_of(chosen):
        values = share[chosen & hot]
        return float(values.mean()) if len(values) else None

    return {"inside_share": mean_of(np.ones(len(targets), dtype=bool)), "inside_share_covid": mean_of(targets == 1),
            "inside_share_non_covid": mean_of(targets == 0), "uniform_share": float(area),
            "images": int(len(heatmaps)), "images_without_heat": int((~hot).sum()), "mean_heatmap": heatmaps.mean(axis=0) if len(heatmaps) else None}


def audit_after_training(mode: str, weights: Path, data, test_rows: np.ndarray, threshold: float, seed: int,
                         trained_passes: int) -> None:
    """covid-ddp-train --audit: the audit of the shipped weights on the test split, into
    <run>/audit-test; under 'auto' only when its work is under AUDIT_SHARE of the run's
    (``trained_passes``: ``training_passes``), else one line saying how to run it. A failure is a
    warning: the run's own outputs are written."""
    if mode == "no":
        return
    command = f"covid-ddp-audit --weights {weights}"
    share = audit_passes(len(test_rows)) / max(trained_passes, 1)
    if mode == "auto" and share > AUDIT_SHARE:
        say(f"covid-ddp-train: the shortcut audit would add {100 * share:.0f}% to this run's work ({len(test_rows)} "
            f"test images against {trained_passes:,} image passes of training): run it with {command}")
        return
    try:
        model = load_model(weights)
        result, _ = audit_rows(model, weights, data, test_rows, "test", (threshold, decision_threshold(None, weights)[1]),
                               seed, weights.parent / "audit-test")
        print(f"Shortcut audit ({result['seconds']:.0f} s): {weights.parent / 'audit-test' / 'audit.md'}")
    except Exception as error:  # an extra: the run's own outputs are already written
        say(f"covid-ddp-train: warning: the shortcut audit failed ({type(error).__name__}: {first_line(error)}); "
            f"run it with {command}")


def audit_rows(model: torch.nn.Module, weights: Path, data, rows: np.ndarray, split: str, decision: tuple[float, str], seed: int,
               output_dir: Path) -> tuple[dict, dict]:
    """``audit`` of ``rows`` of ``data`` at ``decision`` (threshold, where it came from), written to
    ``output_dir``; returns (the result, what it was run on)."""
    threshold, threshold_source = decision
    what = f"the {split} split"
    if len(rows) > AUDIT_IMAGES:
        what = f"the {split} split (a random sample of its {len(rows):,} images, seed {seed})"
        rows = np.sort(np.random.default_rng(stream_seed(seed, "audit_sample")).choice(rows, AUDIT_IMAGES, replace=False))
    images, targets = np.asarray(data.images[rows]), to_binary(data.labels)[rows]
    result = audit(model, images, targets, threshold, source_names(data.meta, rows), patient_ids(data.meta, rows), seed)
    about = {"weights": str(weights), "split": split, "what": what, "data": data.provenance,
             "threshold_source": threshold_source, "seed": seed}
    write_audit(output_dir, result, images, targets, seed, about)
    return result, about


# --- the files ---------------------------------------------------------------------------------


def write_audit(output_dir: Path, result: dict, images: np.ndarray, targets: np.ndarray, seed: int,
                about: dict) -> None:
    """audit.json, audit.md and audit.png; the figure may fail (a warning), the numbers may not."""
    mean_heatmap = result["gradcam"].pop("mean_heatmap")
    report = {**about, **result}
    report["readings"] = {name: {"level": r.level, "reading": r.text} for name, r in readings(report).items()}
    report["verdict"] = verdict(report)
    write_json(output_dir / "audit.json", report)
    with atomic_path(output_dir / "audit.md") as tmp:
        tmp.write_text(markdown(report))
    (output_dir / "audit.png").unlink(missing_ok=True)  # an earlier audit's figure must not sit beside these numbers
    try:
        from ..figures import audit_figure, save_figure

        save_figure(audit_figure(images, targets, with_marks, without_border, mean_heatmap, lung_box, report, seed),
                    output_dir / "audit.png")
    except Exception as error:  # the numbers are written; a figure is worth a warning, not the audit
        say(f"covid-ddp-audit: warning: audit.png not drawn ({type(error).__name__}: {error})")


def markdown(report: dict) -> str:
    lines = [f"# Shortcut audit of `{report.get('weights', 'the model')}`", "",
             f"{report['images']} images ({report['covid']} COVID) of {report.get('what', 'the data')}, "
             f"threshold {report['threshold']:.3f}, seed {report.get('seed', 0)}. Probes of known shortcuts, not a "
             "proof that none is used. Not for clinical use.", "", f"**Verdict:** {verdict(report)}", "",
             "| measurement | value | reading (none / weak / strong sign of a shortcut) |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value} | {reading} |" for name, value, reading in summary_rows(report)]
    lines += ["", "How each is measured: `covid-ddp-audit --help` and docs/evaluation.md#shortcut-audit-covid-ddp-audit.", ""]
    return "\n".join(lines)
