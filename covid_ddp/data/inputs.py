"""What covid-ddp-predict is given: image files (PNG, JPEG, DICOM), folders of them, MCFAM-format
``.npz`` files; each read into images of the model's size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .format import IMAGE_SIZE, IMAGES_KEY
from .parallel import in_order
from .radiographs import centre_square, is_radiograph_file, read_grayscale_and_size, to_model_size
from .store import load_array, validate_images

NPZ_SUFFIX = ".npz"
SHOWN_SIZE = 512  # the largest side an overlay shows an input at (a 3000 px film would make a 30 MB PNG)


@dataclass
class InputImages:
    """Images read from one input file, ready for the model."""

    source: str
    images: np.ndarray  # (N, S, S) uint8, S the model's image size
    resized_from: tuple[int, int] | None = None  # the input's own (width, height), when not S x S
    squares: list[np.ndarray] | None = None  # with keep_squares: each image's centre square at its own size


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


def read_input(path: Path, size: int = IMAGE_SIZE, keep_squares: bool = False) -> InputImages:
    """The images of one input file at ``size`` x ``size`` (the weights' size); with
    ``keep_squares`` also each one's centre square at its own size (up to SHOWN_SIZE), to draw on."""
    if path.suffix.lower() == NPZ_SUFFIX:
        images = load_array(path, IMAGES_KEY)
        validate_images(images, path)
        squares = [centre_square(Image.fromarray(image), SHOWN_SIZE) for image in images] if keep_squares else None
        if images.shape[-1] == size:
            return InputImages(str(path), images, squares=squares)
        resized = np.stack([to_model_size(Image.fromarray(image), size) for image in images])
        return InputImages(str(path), resized, images.shape[1:][::-1], squares)
    if is_radiograph_file(path):
        gray, own_size = read_grayscale_and_size(path, size)
        resized_from = own_size if gray.size != (size, size) else None
        # Read again for the overlay: a large JPEG is decoded smaller for the model (its draft), and
        # the model's pixels must not depend on whether an overlay is drawn.
        squares = [centre_square(read_grayscale_and_size(path, SHOWN_SIZE)[0], SHOWN_SIZE)] if keep_squares else None
        return InputImages(str(path), to_model_size(gray, size)[None], resized_from, squares)
    raise UserError(f"{path}: unsupported input type '{path.suffix}'; give .npz, .png, .jpg or .dcm files or folders")


def read_inputs(files: list[Path], size: int, keep_squares: bool, workers: int):
    """``read_input`` of each file, in order as each is ready, decoded over ``workers`` processes:
    (file, its images or None, the one-line error that refused it or '')."""
    read = functools.partial(_read_or_refusal, size=size, keep_squares=keep_squares)
    yield from in_order(read, files, workers)


def _read_or_refusal(path: Path, size: int, keep_squares: bool) -> tuple[Path, InputImages | None, str]:
    try:
        return path, read_input(path, size, keep_squares), ""
    except UserError as error:  # (in a worker process: the refusal comes back as text)
        return path, None, str(error)


def resized_summary(sizes: list[tuple[int, int]], size: int = IMAGE_SIZE) -> str:
    """One line for all resized images (a folder of 300 JPEGs is not worth 300 notes): how many,
    and the smallest and largest of their own sizes."""
    ordered = sorted(set(sizes), key=lambda size: (size[0] * size[1], size))
    shown = [f"{width}x{height}" for width, height in (ordered[0], ordered[-1])]
    span = shown[0] if len(ordered) == 1 else f"{shown[0]} to {shown[1]}"
    cropped = "; non-square ones center-cropped to a square first" if any(w != h for w, h in sizes) else ""
    images = "1 image was" if len(sizes) == 1 else f"{len(sizes)} images were"
    return f"covid-ddp-predict: {images} resized to {size}x{size}, the weights' size (from {span}{cropped})"
