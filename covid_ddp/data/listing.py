"""A CSV that lists images (``path,label[,patient_id,view,source]``), read strictly.

Spreadsheets and hospital exports write such lists in many ways; a list read loosely stores a
COVID image as normal with no word said. So: the text must be UTF-8 (with or without a BOM) or
UTF-16 with its BOM (Excel's "Unicode text"); any other encoding is refused in one line rather
than guessed. A column named twice, even in other capitals (``path,label,Path``), is refused: a
reader would keep one of them silently. Paths are relative to the CSV's folder and stay inside it
(absolute paths and ``..`` need ``allow_outside``: a list handed over from elsewhere must not
reach any file on the machine). A path to something that is not a regular file (a FIFO, a
device) is refused before it is opened: reading one would hang. One file listed twice under two
labels is a label conflict, named with both lines.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

COLUMNS = ("path", "label", "patient_id", "view", "source")
REQUIRED = ("path", "label")


@dataclass(frozen=True)
class Row:
    """One listed image: its line in the CSV, the file, the path as written, and the other columns."""

    line: int
    file: Path
    path: str
    values: dict


def read_listing(table: Path, allow_outside: bool = False) -> list[Row]:
    """The rows of ``table`` that name an image (blank rows skipped), each checked as above."""
    reader = csv.DictReader(io.StringIO(_text(table), newline=""))
    columns = _columns(table, reader.fieldnames or [])
    rows, seen = [], {}
    for record in reader:
        values = {key: (record.get(name) or "").strip() for key, name in columns.items()}
        if not any(values.values()):  # an empty row, as spreadsheets leave at the end
            continue
        line = reader.line_num
        if not values["path"] or not values["label"]:
            raise UserError(f"{table}, line {line}: empty {'path' if not values['path'] else 'label'}")
        file = _listed_file(table, line, values["path"], allow_outside)
        _refuse_label_conflict(table, line, file, values["label"], seen)
        rows.append(Row(line, file, values["path"], values))
    return rows


def _text(table: Path) -> str:
    raw = table.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"  # the BOM tells the byte order
    else:
        encoding = "utf-8-sig"  # UTF-8, with or without its BOM
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise UserError(f"{table}: not UTF-8 or UTF-16 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                        "save it as 'CSV UTF-8' (or UTF-16 with a BOM)") from None


def _columns(table: Path, names: list[str]) -> dict[str, str]:
    """{column in lower case: its name as written}; a column written twice is refused."""
    columns: dict[str, str] = {}
    for name in names:
        key = name.strip().lower()
        if key in columns:
            raise UserError(f"{table}: the column '{key}' is there twice ('{columns[key]}' and '{name}'); keep one, "
                            "or a reader would silently take either")
        columns[key] = name
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise UserError(f"{table}: no {' or '.join(missing)} column (found: {', '.join(columns) or 'none'}); "
                        "the CSV needs path and label, and may have patient_id, view, source")
    return columns


def _listed_file(table: Path, line: int, written: str, allow_outside: bool) -> Path:
    relative = Path(written)
    outside = relative.is_absolute() or os.path.normpath(written).split(os.sep)[0] == os.pardir
    if outside and not allow_outside:
        raise UserError(f"{table}, line {line}: '{written}' lies outside the CSV's folder; paths are relative to it "
                        "(--allow-outside reads such paths too)")
    file = relative if relative.is_absolute() else table.parent / relative
    try:
        mode = os.stat(file).st_mode
    except OSError:
        return file  # missing: named when it is read (or skipped with --skip-errors)
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise UserError(f"{table}, line {line}: '{written}' is {kind}; list image files only")
    return file


def _refuse_label_conflict(table: Path, line: int, file: Path, label: str, seen: dict) -> None:
    key = os.path.normcase(os.path.abspath(file))
    if key in seen and seen[key][1].lower() != label.lower():
        first_line, first_label = seen[key]
        raise UserError(f"{table}: {file} is listed twice with different labels ('{first_label}' on line "
                        f"{first_line}, '{label}' on line {line}); keep the right one")
    seen.setdefault(key, (line, label))
