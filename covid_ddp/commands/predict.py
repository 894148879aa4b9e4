"""Single-device inference with a trained weights file.

Command line::

    python launch/predict.py --weights runs/<run>/COVID_binary_classifier.pth xray.png scans/ more.npz
    python launch/predict.py --weights runs/s1/COVID_binary_classifier.pth --weights runs/s2/COVID_binary_classifier.pth x.png

Python::

    from covid_ddp import load_model, predict
    model = load_model("COVID_binary_classifier.pth")
    p_covid = predict(model, images)          # images: (N, S, S) uint8, raw pixel values, S = model.spec.image_size

The weights' sidecar (``COVID_binary_classifier.json``) names the network and the image size it
was trained at (a file without one is the seed's Net at 64x64, as the original script wrote).
Inputs are MCFAM-format ``.npz`` files (key ``train_images``), PNG/JPEG/DICOM images
(converted to 8-bit grayscale, center-cropped to a square and resized to that size,
with one line on stderr saying how many were) or folders of them. Output is CSV:
``source,index,p_covid,prediction,threshold``. Not for clinical use.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bounds import IMAGE_SIZE, POSITIVE_INT, PROBABILITY
from .checkpoint import sidecar_path, load_weights, read_sidecar
from .cli import ArgumentParser, HelpFormatter, run_cli
from .data import IMAGES_KEY, blank_rows, load_array, validate_images
from .destinations import check_output_file, check_output_folder, is_own_figure, refuse_inputs, starts_with
from .errors import UserError, first_few
from .files import atomic_path
from .gradcam import gradcam
from .model import CLASS_NAMES, ModelSpec, build_network, for_inference, original_state_dict
from .radiographs import is_radiograph_file, read_grayscale_and_size, to_model_size

NPZ_SUFFIX = ".npz"
CSV_COLUMNS = ("source", "index", "p_covid", "prediction", "threshold")  # each call names its threshold


@dataclass
class InputImages:
    """Images read from one input file, ready for the model."""

    source: str
    images: np.ndarray  # (N, S, S) uint8, S the model's image size
    resized_from: tuple[int, int] | None = None  # the input's own (width, height), when not S x S


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of the weights file ``path`` in eval mode (loaded with ``weights_only=True``, strict):
    the network and size its sidecar names (``model.spec``); without a sidecar, the seed's Net at
    64x64, as written by covid_ddp (any version) or by the original script. Raw 0-255 pixels in."""
    path = Path(path)
    state_dict = load_weights(path)
    spec = model_spec(path)
    if isinstance(state_dict, dict) and spec.name == "net":
        try:
            state_dict = original_state_dict(state_dict)
        except ValueError as error:
            raise UserError(f"{path}: {error}") from None
    model = build_network(spec)
    named = f"{spec.describe()}, as {sidecar_path(path).name} names" if read_sidecar(path) else \
        f"the original script's Net (no {sidecar_path(path).name} beside it names another model)"
    missing, unexpected = _key_mismatch(model, state_dict)
    if missing or unexpected:
        raise UserError(f"{path}: not weights of {named} (missing keys: {first_few(missing, 5)}; unexpected keys: "
                        f"{first_few(unexpected, 5)})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not fit {named} ({str(error).splitlines()[-1].strip()})")
    return model.to(device).eval()


def model_spec(weights: Path) -> ModelSpec:
    """The network and image size of a weights file, from its sidecar (Net at 64 without one)."""
    return ModelSpec.of_sidecar(read_sidecar(weights))


inference_model = for_inference  # the folded, channels_last copy that scores


def _key_mismatch(model: torch.nn.Module, state_dict) -> tuple[list[str], list[str]]:
    if not isinstance(state_dict, dict):
        return ["(the file holds no state_dict)"], []
    expected, found = set(model.state_dict()), set(state_dict)
    return sorted(expected - found), sorted(found - expected)


@torch.inference_mode()
def predict(model: torch.nn.Module, images, batch_size: int = 512) -> np.ndarray:
    """P(COVID) for each raw-pixel image of ``images`` ((N, S, S) or (N, 1, S, S)), in batches.

    ``images`` is a NumPy array (or anything ``np.asarray`` takes) or a tensor on any device: a
    tensor already on the model's device (a set held on the GPU) is scored without a round trip
    through host memory. The result is a NumPy array on the host either way."""
    device = next(model.parameters()).device
    if not isinstance(images, torch.Tensor):  # np.asarray of a CUDA tensor raises: tensors stay as they are
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    probabilities = [
        model(batch.to(device, non_blocking=True).float())[:, 1].float().exp().cpu()
        for batch in images.split(batch_size)
    ]
    return torch.cat(probabilities).numpy() if probabilities else np.empty(0, dtype=np.float32)


# --- reading inputs ----------------------------------------------------------


def collect_files(inputs: list[str]) -> list[Path]:
    """Files named directly, and the supported files inside named folders (sorted, recursive)."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if is_radiograph_file(p) or (p.is_file() and p.suffix.lower() == NPZ_SUFFIX))
            if not found:
                raise UserError(f"{path}: the folder holds no .npz, .png, .jpg or .dcm files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist")
    return files


def read_input(path: Path, size: int = IMAGE_SIZE) -> InputImages:
    """The images of one input file at ``size`` x ``size`` (the weights' size)."""
    if path.suffix.lower() == NPZ_SUFFIX:
        images = load_array(path, IMAGES_KEY)
        validate_images(images, path)
        if images.shape[-1] == size:
            return InputImages(str(path), images)
        resized = np.stack([to_model_size(Image.fromarray(image), size) for image in images])
        return InputImages(str(path), resized, images.shape[1:][::-1])
    if is_radiograph_file(path):
        gray, own_size = read_grayscale_and_size(path, size)
        resized_from = own_size if gray.size != (size, size) else None
        return InputImages(str(path), to_model_size(gray, size)[None], resized_from)
    raise UserError(f"{path}: unsupported input type '{path.suffix}'; give .npz, .png, .jpg or .dcm files or folders")


def resized_summary(sizes: list[tuple[int, int]], size: int = IMAGE_SIZE) -> str:
    """One line for all resized images (a folder of 300 JPEGs is not worth 300 notes): how many,
    and the smallest and largest of their own sizes."""
    ordered = sorted(set(sizes), key=lambda size: (size[0] * size[1], size))
    shown = [f"{width}x{height}" for width, height in (ordered[0], ordered[-1])]
    span = shown[0] if len(ordered) == 1 else f"{shown[0]} to {shown[1]}"
    cropped = "; non-square ones center-cropped to a square first" if any(w != h for w, h in sizes) else ""
    images = "1 image was" if len(sizes) == 1 else f"{len(sizes)} images were"
    return f"covid-ddp-predict: {images} resized to {size}x{size}, the weights' size (from {span}{cropped})"


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
    parser.add_argument("--batch-size", type=POSITIVE_INT.parse, default=512, metavar="N",
                        help="images per forward pass")
    parser.add_argument("--output", metavar="CSV", help="write the CSV to this file instead of standard output")
    parser.add_argument("--skip-errors", action="store_true",
                        help="report unreadable inputs on stderr and score the rest (default: stop at the first)")
    return parser


WEIGHTS_HELP = ("a COVID_binary_classifier.pth written by covid-ddp-train, or by the original script (the same "
                "format)")


def decision_threshold(chosen: float | None, weights: Path) -> tuple[float, str]:
    """(threshold, where it came from): --threshold, else the sidecar beside the weights, else 0.5."""
    if chosen is not None:
        PROBABILITY.check(chosen, "--threshold")
        return chosen, "--threshold"
    stored = read_sidecar(weights)
    if stored is None:
        return 0.5, f"default 0.5 (no {sidecar_path(weights).name} beside the weights)"
    method = stored.get("method", "stored")
    chosen_on = " on the validation split" if stored.get("chosen_on") == "validation" else ""
    return stored["threshold"], f"{method}{chosen_on}, from {sidecar_path(weights).name}"


def run(arguments: argparse.Namespace) -> None:
    check_destinations(arguments)
    from .ensemble import Ensemble, ensemble_threshold

    ensemble = Ensemble.load(arguments.weights, resolve_device(arguments.device))
    if len(ensemble) == 1 or arguments.threshold is not None:
        threshold, threshold_source = decision_threshold(arguments.threshold, ensemble.paths[0])
    else:
        threshold, threshold_source = ensemble_threshold(ensemble)
    overlays = GradcamWriter(Path(arguments.gradcam), ensemble.models, threshold) if arguments.gradcam else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    files = collect_files(arguments.inputs)
    skipped, resized_from, blank = 0, [], []
    for path in files:
        try:
            item = read_input(path, ensemble.image_size)
        except UserError as error:
            if not arguments.skip_errors:
                raise
            skipped += 1
            print(f"skipped: {error}", file=sys.stderr)
            continue
        if item.resized_from is not None:
            resized_from.extend([item.resized_from] * len(item.images))
        blank.extend(f"{Path(item.source).name}[{row}]" for row in blank_rows(item.images))
        p_covid = ensemble.predict(item.images, arguments.batch_size)
        for index, p in enumerate(p_covid):
            writer.writerow([item.source, index, f"{p:.6f}", CLASS_NAMES[int(p >= threshold)], f"{threshold:.6f}"])
        if overlays is not None:
            overlays.write(item, p_covid)
    if skipped:
        if skipped == len(files):
            raise UserError(f"none of the {len(files)} inputs could be read")
        print(f"skipped {skipped} of {len(files)} inputs", file=sys.stderr)
    if arguments.output:
        with atomic_path(Path(arguments.output)) as tmp:
            tmp.write_text(buffer.getvalue())
    else:
        sys.stdout.write(buffer.getvalue())
    # After the output, so that a refused input stays a one-line error.
    if resized_from:
        print(resized_summary(resized_from, ensemble.image_size), file=sys.stderr)
    if blank:  # image files are refused as blank when read; an array's rows are scored, and named here
        print(f"covid-ddp-predict: warning: {len(blank)} image(s) are blank, a single gray level "
              f"({first_few(blank, 3)}): their p_covid is the model's reading of nothing", file=sys.stderr)
    print(f"called COVID at p_covid >= threshold {threshold:.4f} ({threshold_source})", file=sys.stderr)


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
        from .figures import overlay_figure, save_figure  # matplotlib only when asked for

        stem = self._unique_stem(Path(item.source).stem)
        # An ensemble's heatmap: the mean of its members' (each scaled to [0, 1]).
        heatmaps = np.mean([gradcam(model, item.images) for model in self.models], axis=0)
        for index, (image, heatmap, p) in enumerate(zip(item.images, heatmaps, p_covid)):
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
