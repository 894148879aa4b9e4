"""covid-ddp-predict: P(COVID) and the call for each input image, as CSV (``models.inference``).

    python launch/predict.py --weights runs/<run>/COVID_binary_classifier.pth xray.png scans/ more.npz
    python launch/predict.py --weights runs/s1/COVID_binary_classifier.pth --weights runs/s2/COVID_binary_classifier.pth x.png

The weights' sidecar names the network and its image size (a file without one is the seed's Net at
64x64). Inputs are MCFAM-format ``.npz`` files, PNG/JPEG/DICOM images (converted to 8-bit grayscale,
center-cropped and resized, one line on stderr saying how many were: ``data.inputs``) or folders of
them. Output: ``source,index,p_covid,prediction,threshold``; ``--gradcam DIR`` adds an overlay per
image. Not for clinical use."""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import sys
from pathlib import Path

import numpy as np
import torch

from ..bounds import POSITIVE_INT, PROBABILITY
from ..cli import WEIGHTS_HELP, ArgumentParser, HelpFormatter, run_cli
from ..data.format import CLASS_NAMES
from ..data.inputs import collect_files, read_inputs, resized_summary
from ..data.parallel import usable_cores
from ..data.tensors import blank_rows
from ..destinations import check_output_file, check_output_folder, is_own_figure, refuse_inputs, starts_with
from ..errors import UserError, first_few
from ..evaluation.run_data import load_evaluation_data
from ..files import atomic_path
from ..models.gradcam import gradcam
from ..models.inference import batch_size_for, resolve_device
from ..models.weights import decision_threshold, sidecar_path

CSV_COLUMNS = ("source", "index", "p_covid", "prediction", "threshold")  # each call names its threshold


# --- command line ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="covid-ddp-predict",
        description="Score chest X-rays with a trained covid_ddp model on one device. Not for clinical use.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=".npz files (key train_images), PNG/JPEG/DICOM images, or folders of them")
    parser.add_argument("--weights", required=True, action="append", metavar="PTH", help=WEIGHTS_HELP + ". "
                        "Repeated: the ensemble of those runs (the mean of their P(COVID); its threshold chosen on "
                        "their common validation split)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    parser.add_argument("--threshold", type=PROBABILITY.parse, metavar="P",
                        help="p_covid at or above this is called COVID "
                        "(default: the threshold chosen on the validation split, from the JSON beside the weights; "
                        "else 0.5)")
    parser.add_argument("--gradcam", metavar="DIR", help="also write a Grad-CAM overlay PNG per image here "
                        "(the radiograph, the heatmap of what drove P(COVID), p_covid in the title)")
    parser.add_argument("--batch-size", type=POSITIVE_INT.parse, metavar="N",
                        help="images per forward pass (default: 512 on a GPU; on a CPU as many as make 32 images of "
                             "64x64 in pixels: 2 at 224 px)")
    parser.add_argument("--workers", type=POSITIVE_INT.parse, default=usable_cores(), metavar="N",
                        help="processes that read and decode the image files (default: this machine's cores)")
    parser.add_argument("--output", metavar="CSV", help="write the CSV to this file instead of standard output")
    parser.add_argument("--skip-errors", action="store_true",
                        help="report unreadable inputs on stderr and score the rest (default: stop at the first)")
    return parser


def run(arguments: argparse.Namespace) -> None:
    check_destinations(arguments)
    from ..evaluation.ensemble import Ensemble, ensemble_threshold

    device = resolve_device(arguments.device)
    ensemble = Ensemble.load(arguments.weights, device)
    if len(ensemble) == 1 or arguments.threshold is not None:
        threshold, threshold_source = decision_threshold(arguments.threshold, ensemble.paths[0])
    else:
        run_data = functools.partial(load_evaluation_data, None, ensemble.paths[0])  # read only if needed
        threshold, threshold_source = ensemble_threshold(ensemble, run_data)
    overlays = GradcamWriter(Path(arguments.gradcam), ensemble.models, threshold) if arguments.gradcam else None
    files = collect_files(arguments.inputs)
    batch_size = arguments.batch_size or batch_size_for(ensemble.image_size, device)
    scores = ScoreWriter(ensemble, threshold, batch_size, overlays)
    with csv_destination(arguments.output) as destination:
        scores.start(destination)
        for path, item, refusal in read_inputs(files, ensemble.image_size, overlays is not None, arguments.workers):
            if refusal and not arguments.skip_errors:
                raise UserError(refusal)
            if refusal:
                scores.skipped += 1
                print(f"skipped: {refusal}", file=sys.stderr)
            else:
                scores.add(item)
        scores.flush()
        if scores.skipped == len(files):
            raise UserError(f"none of the {len(files)} inputs could be read")
    if scores.skipped:
        print(f"skipped {scores.skipped} of {len(files)} inputs", file=sys.stderr)
    # After the output, so that a refused input stays a one-line error.
    if scores.resized_from:
        print(resized_summary(scores.resized_from, ensemble.image_size), file=sys.stderr)
    if scores.blank:  # image files are refused as blank when read; an array's rows are scored, and named here
        print(f"covid-ddp-predict: warning: {len(scores.blank)} image(s) are blank, a single gray level "
              f"({first_few(scores.blank, 3)}): their p_covid is the model's reading of nothing", file=sys.stderr)
    print(f"called COVID at p_covid >= threshold {threshold:.4f} ({threshold_source})", file=sys.stderr)


@contextlib.contextmanager
def csv_destination(output: str | None):
    """Standard output, or the file ``output``, written under a temporary name and renamed when the
    command ends well (a stopped or refused run leaves no partial CSV behind)."""
    if not output:
        yield sys.stdout
        return
    with atomic_path(Path(output)) as tmp, open(tmp, "w", newline="") as handle:
        yield handle


class ScoreWriter:
    """Scores the images of consecutive inputs together, ``batch_size`` at a time, and writes their
    CSV rows (and overlays) as each batch is scored: memory holds one batch, whatever the number
    of inputs."""

    def __init__(self, ensemble, threshold: float, batch_size: int, overlays: "GradcamWriter | None"):
        self.ensemble, self.threshold, self.batch_size, self.overlays = ensemble, threshold, batch_size, overlays
        self.pending, self.pending_images = [], 0
        self.skipped, self.resized_from, self.blank = 0, [], []

    def start(self, destination) -> None:
        self.destination, self.writer = destination, csv.writer(destination, lineterminator="\n")
        self.writer.writerow(CSV_COLUMNS)

    def add(self, item) -> None:
        if item.resized_from is not None:
            self.resized_from.extend([item.resized_from] * len(item.images))
        self.blank.extend(f"{Path(item.source).name}[{row}]" for row in blank_rows(item.images))
        self.pending.append(item)
        self.pending_images += len(item.images)
        if self.pending_images >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        p_covid = self.ensemble.predict(np.concatenate([item.images for item in self.pending]), self.batch_size)
        for item, scores in zip(self.pending, np.split(p_covid, np.cumsum([len(i.images) for i in self.pending])[:-1])):
            for index, p in enumerate(scores):
                call = CLASS_NAMES[int(p >= self.threshold)]
                self.writer.writerow([item.source, index, f"{p:.6f}", call, f"{self.threshold:.6f}"])
            if self.overlays is not None:
                self.overlays.write(item, scores)
        self.destination.flush()
        self.pending, self.pending_images = [], 0


def check_destinations(arguments: argparse.Namespace) -> None:
    """Before anything is read: the CSV replaces no input and no file but an earlier CSV of this
    command; overlays go to a folder that is no input's and holds no PNG this command did not draw."""
    weights = [Path(path) for path in arguments.weights]
    inputs = [*arguments.inputs, *weights, *(sidecar_path(path) for path in weights)]
    if arguments.output:
        refuse_inputs(Path(arguments.output), "--output", inputs)
        check_output_file(Path(arguments.output), "--output", "a CSV covid-ddp-predict wrote",
                          starts_with(",".join(CSV_COLUMNS)))
    if arguments.gradcam:
        folder = Path(arguments.gradcam)
        refuse_inputs(folder, "--gradcam", inputs)
        pictures = sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []
        check_output_folder(folder, "--gradcam", pictures, "covid-ddp-predict", is_own_figure)


class GradcamWriter:
    """One overlay PNG per scored image: ``<input stem>_<index>.png`` in ``folder``."""

    def __init__(self, folder: Path, models: list[torch.nn.Module], threshold: float):
        self.folder, self.models, self.threshold = folder, models, threshold
        self.used_stems: set[str] = set()

    def write(self, item, p_covid: np.ndarray) -> None:
        from ..figures import overlay_figure, save_figure  # matplotlib only when asked for

        stem = self._unique_stem(Path(item.source).stem)
        # An ensemble's heatmap: the mean of its members' (each scaled to [0, 1]).
        heatmaps = np.mean([gradcam(model, item.images) for model in self.models], axis=0)
        shown = item.squares or list(item.images)  # the input at its own size, where it was kept
        for index, (image, heatmap, p) in enumerate(zip(shown, heatmaps, p_covid)):
            call = CLASS_NAMES[int(p >= self.threshold)]
            title = f"{Path(item.source).name} [{index}]: P(COVID) = {p:.3f} -> {call} (threshold {self.threshold:.3f})"
            save_figure(overlay_figure(image, heatmap, title),
                        self.folder / f"{stem}_{index}.png")

    def _unique_stem(self, stem: str) -> str:
        """Two inputs named alike (a/x.png, b/x.png) must not overwrite each other's overlays."""
        candidate, copy = stem, 1
        while candidate in self.used_stems:
            copy += 1
            candidate = f"{stem}-{copy}"
        self.used_stems.add(candidate)
        return candidate


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-predict")


if __name__ == "__main__":  # python -m covid_ddp.commands.predict
    raise SystemExit(main())
