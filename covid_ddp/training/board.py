"""What the main process shows in TensorBoard beyond the scalars accelerate logs.

Each epoch: the validation PR curve and, every ``--log-images-every`` epochs, a fixed set of
validation images, once with their true label and P(COVID) and once with Grad-CAM over
them, so a user watches where the model's attention forms. At the end: the test PR curve,
ROC and confusion matrix, the same images called by the shipped weights at the run's
threshold (tags ``shipped/...``), and the run's hyper-parameters next to its final metrics
in the HParams tab. Figures are drawn with numpy and Pillow: matplotlib's import alone
took 0.4 s of every run (covid-ddp-evaluate's figures, saved as files, are matplotlib's).

Only the main process calls these (``Logger`` is ``None`` elsewhere); nothing here is a
collective, and Grad-CAM runs on the unwrapped model, so DDP never sees it. A figure that
fails to draw is a warning: the run goes on without it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..cli import say
from ..data.format import CLASS_NAMES
from ..metrics import roc_points
from ..models.gradcam import gradcam
from ..models.inference import predict

WATCHED_IMAGES = 8  # validation images shown every epoch


class Logger:
    """Wraps the run's ``SummaryWriter`` (from ``accelerator.get_tracker('tensorboard', unwrap=True)``)."""

    def __init__(self, writer, images: np.ndarray, targets: np.ndarray, watched_rows: np.ndarray,
                 images_every: int = 1):
        self.writer, self.images_every = writer, images_every
        self.watched_images = images[watched_rows]
        self.watched_targets = targets[watched_rows]

    @classmethod
    def for_run(cls, accelerator, images: np.ndarray, targets: np.ndarray, monitor_rows: np.ndarray,
                images_every: int):
        """The main process's logger; ``None`` on the others."""
        if not accelerator.is_main_process:
            return None
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        return cls(writer, images, targets, watched_rows(targets, monitor_rows), images_every)

    def epoch(self, model: torch.nn.Module, monitored, monitor_name: str, epoch: int) -> None:
        name = monitor_name.lower()
        self.writer.add_pr_curve(f"{name}/pr_curve", monitored.targets, monitored.p_covid, global_step=epoch)
        if self.images_every and epoch % self.images_every == 0:
            with _figures_may_fail(f"the TensorBoard figures of epoch {epoch}"):
                self._watched_figures(model, name, epoch)

    def _watched_figures(self, model: torch.nn.Module, tag: str, epoch: int, threshold: float | None = None) -> None:
        """The watched images, plain and under Grad-CAM. Each epoch they show P(COVID) only: the
        run's threshold is chosen at the end, and the grid drawn then calls each image with it
        (the call covid-ddp-predict makes with the shipped weights)."""
        heatmaps = gradcam(model, self.watched_images)
        scores = predict(model, self.watched_images)  # the model is in eval mode after evaluate()
        captions = [f"true {CLASS_NAMES[t]}\n{_call(p, threshold)}" for t, p in zip(self.watched_targets, scores)]
        self.writer.add_image(f"{tag}/inputs", tile_grid(self.watched_images, None, captions), global_step=epoch)
        self.writer.add_image(f"{tag}/gradcam", tile_grid(self.watched_images, heatmaps, captions),
                              global_step=epoch)

    def final(self, test, metrics: dict, hparams: dict, epoch: int, model: torch.nn.Module | None = None,
              threshold: float | None = None) -> None:
        """The test figures, and the watched images called at the run's threshold by ``model``, the shipped weights."""
        self.writer.add_pr_curve("test/pr_curve", test.targets, test.p_covid, global_step=epoch)
        if self.images_every:
            with _figures_may_fail("the final TensorBoard figures"):
                self._test_figures(test, metrics, epoch)
                if model is not None:
                    self._watched_figures(model.eval(), "shipped", epoch, threshold)
        finals = {f"final/{k}": metrics[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")
                  if metrics[k] is not None}
        self.writer.add_hparams(hparams, finals, run_name="hparams")
        self.writer.flush()

    def _test_figures(self, test, metrics: dict, epoch: int) -> None:
        self.writer.add_image("test/roc", roc_image(test.p_covid, test.targets, metrics["roc_auc"]), global_step=epoch)
        self.writer.add_image("test/confusion", confusion_image(metrics["confusion_matrix"], metrics["threshold"]),
                              global_step=epoch)


def _call(p_covid: float, threshold: float | None) -> str:
    if threshold is None:
        return f"P(COVID)={p_covid:.2f}"
    return f"{CLASS_NAMES[int(p_covid >= threshold)]}: {p_covid:.2f} {'>=' if p_covid >= threshold else '<'} {threshold:.2f}"


@contextlib.contextmanager
def _figures_may_fail(what: str):
    """A figure is worth a warning, not the run: a drawing error ends up here, on the main
    process only, and training goes on."""
    try:
        yield
    except Exception as error:
        say(f"covid-ddp-train: warning: could not draw {what} ({type(error).__name__}: {error}); training goes on")


def tile_grid(images: np.ndarray, heatmaps: np.ndarray | None, captions: list[str], columns: int = 4,
              scale: int = 2) -> np.ndarray:
    """A (3, H, W) uint8 grid of the radiographs (upscaled), their heatmaps blended in over them,
    a caption above each. Drawn with numpy and Pillow: a matplotlib figure of the same took
    about 0.7 s, every epoch, on a 2-core CPU."""
    from PIL import Image, ImageDraw

    caption_height, size = 26, images.shape[-1] * scale
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * size, rows * (size + caption_height)), "black")
    draw = ImageDraw.Draw(canvas)
    for position, (image, caption) in enumerate(zip(images, captions)):
        tile = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1).astype(np.float32)[..., None].repeat(3, -1)
        if heatmaps is not None:
            heat = np.repeat(np.repeat(heatmaps[position], scale, axis=0), scale, axis=1)
            tile = 0.55 * tile + 0.45 * 255 * _jet(heat)
        left, top = position % columns * size, position // columns * (size + caption_height)
        canvas.paste(Image.fromarray(tile.clip(0, 255).astype(np.uint8)), (left, top + caption_height))
        draw.multiline_text((left + 2, top + 1), caption, fill="white", spacing=1)
    return np.asarray(canvas).transpose(2, 0, 1).copy()


def roc_image(p_covid: np.ndarray, targets: np.ndarray, auc: float | None, size: int = 320) -> np.ndarray:
    """A (3, H, W) uint8 ROC plot: the curve over the chance diagonal, the AUC in the title."""
    from PIL import Image, ImageDraw

    margin, canvas = 36, Image.new("RGB", (size, size), "white")
    draw, side = ImageDraw.Draw(canvas), size - 2 * margin

    def at(x, y):  # (0, 0) bottom left, (1, 1) top right
        return margin + x * side, size - margin - y * side

    draw.rectangle([at(0, 1), at(1, 0)], outline="black")
    draw.line([at(0, 0), at(1, 1)], fill="grey")
    if len(np.unique(targets)) == 2:
        false_positive, true_positive, _ = roc_points(p_covid, targets)
        draw.line([at(x, y) for x, y in zip(false_positive, true_positive)], fill=(31, 119, 180), width=2)
    title = "ROC (COVID positive)" + (f": AUC {auc:.3f}" if auc is not None else "")
    draw.text((margin, 8), title, fill="black")
    draw.text((margin, size - margin + 6), "1 - specificity", fill="black")
    draw.text((4, margin - 14), "sensitivity", fill="black")
    return np.asarray(canvas).transpose(2, 0, 1).copy()


def confusion_image(matrix: list[list[int]], threshold: float, cell: int = 110) -> np.ndarray:
    """A (3, H, W) uint8 confusion matrix: true class by row, the call by column, counts shaded."""
    from PIL import Image, ImageDraw

    counts, left, top = np.asarray(matrix), 90, 40
    canvas = Image.new("RGB", (left + 2 * cell + 10, top + 2 * cell + 30), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 8), f"Confusion at threshold {threshold:.3f}", fill="black")
    for row in range(2):
        draw.text((4, top + row * cell + cell // 2), f"true {CLASS_NAMES[row]}", fill="black")
        for column in range(2):
            shade = int(255 - 180 * counts[row, column] / max(counts.max(), 1))
            box = [left + column * cell, top + row * cell, left + (column + 1) * cell, top + (row + 1) * cell]
            draw.rectangle(box, fill=(shade, shade, 255), outline="black")
            draw.text((box[0] + cell // 2 - 12, box[1] + cell // 2 - 6), str(counts[row, column]),
                      fill="black" if shade > 128 else "white")
    for column in range(2):
        draw.text((left + column * cell + 8, top + 2 * cell + 8), f"called {CLASS_NAMES[column]}", fill="black")
    return np.asarray(canvas).transpose(2, 0, 1).copy()


def _jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map, (H, W) in [0, 1] -> (H, W, 3) in [0, 1]: within 0.13 of matplotlib's, without it."""
    return np.clip(1.5 - np.abs(4 * values[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def watched_rows(targets: np.ndarray, monitor_rows: np.ndarray, count: int = WATCHED_IMAGES) -> np.ndarray:
    """A fixed, class-balanced handful of monitored rows (the first of each class, in row order)."""
    per_class = [monitor_rows[targets[monitor_rows] == label][: count // 2] for label in (1, 0)]
    return np.concatenate(per_class)
