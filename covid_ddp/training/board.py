"""What the main process shows in TensorBoard beyond the scalars accelerate logs.

Each epoch: the validation PR curve and, every ``--log-images-every`` epochs, a fixed set of
validation images, once with their true label and P(COVID) and once with Grad-CAM over
them, so a user watches where the model's attention forms. At the end: the test PR curve,
ROC and confusion matrix, the same images called by the shipped weights at the run's
threshold (tags ``shipped/...``), and the run's hyper-parameters next to its final metrics
in the HParams tab. Figures are drawn with matplotlib, imported only when one is drawn.

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
        from .. import figures

        self.writer.add_figure("test/roc", figures.roc_figure(test.p_covid, test.targets, metrics["roc_auc"]),
                               global_step=epoch)
        self.writer.add_figure("test/confusion", figures.confusion_figure(metrics["confusion_matrix"],
                                                                          metrics["threshold"]), global_step=epoch)


def _call(p_covid: float, threshold: float | None) -> str:
    if threshold is None:
        return f"P(COVID)={p_covid:.2f}"
    return f"{CLASS_NAMES[int(p_covid >= threshold)]}: {p_covid:.2f} {'>=' if p_covid >= threshold else '<'} {threshold:.2f}"


@contextlib.contextmanager
def _figures_may_fail(what: str):
    """A figure is worth a warning, not the run: matplotlib errors (a broken font cache, a
    backend problem) end up here, on the main process only, and training goes on."""
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


def _jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map, (H, W) in [0, 1] -> (H, W, 3) in [0, 1]: within 0.13 of matplotlib's, without it."""
    return np.clip(1.5 - np.abs(4 * values[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def watched_rows(targets: np.ndarray, monitor_rows: np.ndarray, count: int = WATCHED_IMAGES) -> np.ndarray:
    """A fixed, class-balanced handful of monitored rows (the first of each class, in row order)."""
    per_class = [monitor_rows[targets[monitor_rows] == label][: count // 2] for label in (1, 0)]
    return np.concatenate(per_class)
