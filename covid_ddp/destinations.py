"""Where a command may write: never over its own inputs, never over a file it did not make, never
into a folder it reads from.

Every command with an output (``--output``, ``--output-dir``, ``--onnx``, ``--gradcam``) checks
its destination here before it reads or computes anything, so a refusal costs nothing and leaves
nothing behind. A file the command wrote before is recognised by what it holds (a prediction
CSV's header, a figure's ``Software`` tag, an ONNX graph's input and output names, a folder's
record file), and only such a file is replaced; anything else is the user's and is left as it is.
Outputs inside an input folder are refused: a later run would read them as data (Grad-CAM
overlays written into a class folder became training images at the next prepare).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from .errors import UserError, first_few

# The PNG text tag of every figure covid_ddp draws (figures.save_figure): how a later run knows
# a figure is its own to replace. Other programs' PNGs (matplotlib's own tag included) differ.
FIGURE_SOFTWARE = "covid_ddp"


def refuse_inputs(destination: Path, flag: str, inputs: Iterable[Path | str], nested: bool = True) -> None:
    """``destination`` (a file or a folder to write) is none of ``inputs``; with ``nested`` (inputs
    read recursively: folders of images) it also lies inside none of them and holds none of them.
    An MCFAM folder is read flat (its own files only), so a subfolder of one is no input."""
    target = Path(destination).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            raise UserError(f"{flag} {destination} is also an input ({given}); write the output elsewhere")
        if not nested:
            continue
        if source.is_dir() and source in target.parents:
            raise UserError(f"{flag} {destination} lies inside the input folder {given}: what is written there "
                            "would be read as input next time; write the output elsewhere")
        if target in source.parents:
            raise UserError(f"{flag} {destination} holds the input {given}; write the output elsewhere")


def check_can_make(folder: Path, flag: str) -> None:
    """``folder`` exists or can be made: no file stands on its path, and its nearest existing
    ancestor is writable. Checked up front: a command must not fail there after its work is done."""
    folder = Path(folder).absolute()
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"{flag}: {ancestor} is a file, not a folder; give another path")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise UserError(f"{flag}: cannot write in {ancestor} (permission denied); give another path")
            return


def check_output_file(destination: Path, flag: str, what: str, is_ours: Callable[[Path], bool]) -> None:
    """``destination`` is new, or a file the command wrote before (``is_ours``): replacing it loses
    nothing the user made. ``what`` names such a file ('a CSV covid-ddp-predict wrote')."""
    destination = Path(destination)
    if destination.is_dir():
        raise UserError(f"{flag} {destination} is a folder; give a file name")
    check_can_make(destination.parent, flag)
    if destination.exists() and not _safely(is_ours, destination):
        raise UserError(f"{flag} {destination} exists and is not {what}; it is left as it is: give a new file name")


def check_output_folder(folder: Path, flag: str, names: Iterable[str], what: str,
                        is_ours: Callable[[Path], bool]) -> None:
    """The files ``names`` that a command writes into ``folder`` are new, or ones it wrote before
    (``is_ours``); other files in the folder are never touched, so they do not matter."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; give a folder")
    check_can_make(folder, flag)
    foreign = [name for name in names if (folder / name).exists() and not _safely(is_ours, folder / name)]
    if foreign:
        raise UserError(f"{flag} {folder} holds {first_few(foreign, 3)}, which {what} did not write; they are left "
                        "as they are: give another folder")


def is_own_figure(path: Path) -> bool:
    """A PNG covid_ddp drew (its ``Software`` tag)."""
    with Image.open(path) as image:
        return image.format == "PNG" and str(image.info.get("Software", "")).startswith(FIGURE_SOFTWARE)


def starts_with(header: str) -> Callable[[Path], bool]:
    """A recogniser of text files whose first line is ``header`` (a CSV covid_ddp wrote)."""
    def recognise(path: Path) -> bool:
        with open(path, "rb") as handle:
            return handle.readline(len(header) + 2).decode("utf-8", "replace").rstrip("\r\n") == header
    return recognise


def record_of(name: str, *keys: str) -> Callable[[Path], bool]:
    """A recogniser of a folder's outputs by its record: the JSON object ``name`` beside them holding
    ``keys`` (evaluation.json, audit.json), so figures an earlier version drew (untagged) are known too."""
    def recognise(path: Path) -> bool:
        record = json.loads((path.parent / name).read_text())
        return isinstance(record, dict) and all(key in record for key in keys)
    return recognise


def either(*recognisers: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda path: any(_safely(recognise, path) for recognise in recognisers)


def _safely(is_ours: Callable[[Path], bool], path: Path) -> bool:
    """A file that cannot even be read as ours (not a PNG, unreadable, a device) is not ours."""
    if not path.is_file():
        return False
    try:
        return bool(is_ours(path))
    except Exception:  # noqa: BLE001  (any failure to read it as our own output means: not ours)
        return False
