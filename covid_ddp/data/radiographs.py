"""One radiograph file (PNG, JPEG or DICOM) -> the square uint8 image the model reads (64x64 by default).

    from covid_ddp.data.radiographs import read_radiograph
    image = read_radiograph("scan.dcm")            # (64, 64) uint8
    image = read_radiograph("scan.dcm", 224)       # (224, 224) uint8

The processing is the one the shared real sets were made with (their READMEs): 8-bit
grayscale, centre-cropped to a square on the shorter side, resized with Pillow's LANCZOS
(``reducing_gap=3``), no equalisation. Large JPEGs are decoded at a reduced DCT scale of at
least 256 px a side (512 for 224 px: ``jpeg_draft_side``). To 8 bits:

- PNG/JPEG: turned as their EXIF orientation says (as every viewer shows them: phone
  photos of films carry one; the shared sets' processing ignored it); alpha is composited
  onto black; 16-bit and 32-bit images are min-max scaled.
- DICOM (needs ``pydicom``: ``pip install covid_ddp[dicom]``): the modality LUT (rescale
  slope/intercept) is applied, then the VOI LUT or the first window (centre/width) and
  its output range is mapped to 0-255; without either, the image is min-max scaled.
  MONOCHROME1 (white = low values) is inverted so that bone is bright, as in every other
  format. Multi-frame files give their first frame.

``radiograph_tags`` reads the patient and the view position from a DICOM header, so a
folder of DICOM files splits by patient without a CSV.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError, type_and_first_line
from .format import IMAGE_SIZE, MIN_IMAGE_SIZE

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
RADIOGRAPH_SUFFIXES = PICTURE_SUFFIXES | DICOM_SUFFIXES


def jpeg_draft_side(size: int) -> int:
    """Big JPEGs are decoded at a DCT scale keeping at least this many pixels a side: twice the
    output size as a power of two, 256 at the least (64 -> 256, 224 -> 512: the shared sets' own)."""
    return 1 << max(8, (2 * size - 1).bit_length())


def read_radiograph(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """The (size, size) uint8 image of one file; a file that cannot be read is a UserError naming it."""
    return to_model_size(read_grayscale(path, size), size)


def read_with_tags(path: str | Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray, dict]:
    """``read_radiograph`` and ``radiograph_tags`` of one file, a DICOM parsed once for both."""
    path = Path(path)
    if not is_dicom(path):
        return read_radiograph(path, size), {}
    dataset = _read_dicom(path)
    gray = refuse_blank(Image.fromarray(dicom_to_8bit(dataset, path)), path)
    return to_model_size(gray, size), _dicom_tags(dataset)


def read_grayscale(path: str | Path, size: int = IMAGE_SIZE) -> Image.Image:
    """The file as an 8-bit grayscale Pillow image, at its own size (or a JPEG's draft size for ``size``)."""
    return read_grayscale_and_size(path, size)[0]


def read_grayscale_and_size(path: str | Path, size: int = IMAGE_SIZE) -> tuple[Image.Image, tuple[int, int]]:
    """``read_grayscale`` and the picture's own (width, height), upright: a large JPEG is decoded
    smaller (its draft), and what a user is told about resizing should name the file's size."""
    path = Path(path)
    if is_dicom(path):
        gray = refuse_blank(Image.fromarray(dicom_to_8bit(_read_dicom(path), path)), path)
        return gray, gray.size
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a scan that large is refused too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if image.format == "JPEG":
                    image.draft(image.mode, (jpeg_draft_side(size),) * 2)
                image.load()
                gray = refuse_blank(to_grayscale_8bit(upright(image)), path)
                turned = gray.size != image.size  # an EXIF quarter turn swaps width and height
                return gray, (height, width) if turned else (width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"{path}: refused, too many pixels for an X-ray (Pillow's decompression-bomb guard: {error})")
    except (OSError, ValueError, SyntaxError) as error:  # unidentified, truncated or corrupt files
        raise UserError(f"{path}: not a readable image ({error})")


def refuse_blank(gray: Image.Image, path: Path) -> Image.Image:
    """A file with no picture in it (a single gray level: an all-black export, a DICOM whose rescale
    slope is 0; or a few pixels) is refused by name, not scored or trained on: its P(COVID) would
    be the model's reading of nothing. prepare and predict skip it with --skip-errors."""
    if min(gray.size) < MIN_IMAGE_SIZE:
        raise UserError(f"{path}: {gray.size[0]}x{gray.size[1]} pixels is too small to be a radiograph "
                        f"({MIN_IMAGE_SIZE} a side at the least)")
    low, high = gray.getextrema()
    if low == high:
        raise UserError(f"{path}: a blank image (every pixel is {low}): there is nothing in it to read; remove it "
                        "(--skip-errors goes on without it)")
    return gray


# EXIF orientation -> the transpose that shows the picture as viewers do (1: as stored).
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def upright(image: Image.Image) -> Image.Image:
    """The picture turned as its EXIF orientation says. Only that tag is read (not Pillow's
    exif_transpose, which rewrites the whole EXIF block and fails on any malformed tag)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block: the pixels are still good
        return image
    method = _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def centre_square(gray: Image.Image, largest: int) -> np.ndarray:
    """The square the model reads (the centre crop) at the input's own resolution, at most
    ``largest`` pixels a side: what an overlay is drawn on."""
    side = min(gray.size)
    left, top = (gray.size[0] - side) // 2, (gray.size[1] - side) // 2
    square = gray.crop((left, top, left + side, top + side))
    if side > largest:
        square = square.resize((largest, largest), Image.LANCZOS)
    return np.array(square, dtype=np.uint8)


def to_model_size(gray: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre square crop on the shorter side, then LANCZOS to (size, size); a writable uint8 array."""
    if gray.size != (size, size):
        side = min(gray.size)
        left, top = (gray.size[0] - side) // 2, (gray.size[1] - side) // 2
        gray = gray.crop((left, top, left + side, top + side))
        gray = gray.resize((size, size), Image.LANCZOS, reducing_gap=3.0)
    return np.array(gray, dtype=np.uint8)  # a copy: torch refuses read-only arrays


def to_grayscale_8bit(image: Image.Image) -> Image.Image:
    """Alpha is composited onto black; 16/32-bit images are min-max scaled to 0-255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_min_max_8bit(np.asarray(image, dtype=np.float64)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


# --- DICOM ---------------------------------------------------------------------


def is_radiograph_file(path: Path) -> bool:
    """A file this module reads: by suffix, or a DICOM by its marker whatever its name (PACS
    exports name files IM0001, or by UID: 1.2.840.113619...)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    return path.suffix.lower() in RADIOGRAPH_SUFFIXES or is_dicom(path)


def is_dicom(path: Path) -> bool:
    """By suffix, or by the 'DICM' marker at byte 128 (hospital exports rarely say .dcm)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_to_8bit(dataset, path: Path) -> np.ndarray:
    """Stored values -> modality LUT -> VOI LUT or window -> 0-255, bone bright."""
    pixels = _dicom_pixels(dataset, path)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    try:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # RGB, YBR or palette secondary captures
            return _colour_to_gray(pixels, dataset, photometric)
        scaled = _grayscale_to_8bit(pixels, dataset)
    except Exception as error:  # malformed LUTs or windows: pydicom raises ValueError, AttributeError, ...
        raise UserError(f"{path}: cannot apply the DICOM's LUT or window ("
                        f"{type_and_first_line(error)})")
    return 255 - scaled if photometric == "MONOCHROME1" else scaled


PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dicom_pixels(dataset, path: Path) -> np.ndarray:
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise UserError(f"{path}: no image in it (no DICOM pixel data): a damaged file, or not a DICOM file at all")
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        _settle_transfer_syntax(dataset, path)
    try:
        return dataset.pixel_array
    except Exception as error:  # no pixel data, or a compressed syntax without its decoder
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        hint = ("; this compressed file needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg (or gdcm)") if syntax is not None and syntax.is_compressed else ""
        raise UserError(f"{path}: cannot decode the DICOM pixel data ("
                        f"{type_and_first_line(error)}){hint}")


def _settle_transfer_syntax(dataset, path: Path) -> None:
    """A file without its header (old archives write the bare data set) names no transfer syntax;
    the encoding pydicom read it in is one of the uncompressed three, and says which."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(dataset, "original_encoding", (None, None))
    syntax = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}.get((implicit, little))
    if syntax is None:
        raise UserError(f"{path}: its DICOM header is missing or damaged (no Transfer Syntax UID says how the "
                        "pixels are stored); export the image again from the PACS or viewer")
    if getattr(dataset, "file_meta", None) is None:
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax


def _grayscale_to_8bit(pixels: np.ndarray, dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    voi_range = _voi_output_range(dataset)
    if voi_range is None:
        return _min_max_8bit(apply_modality_lut(pixels, dataset).astype(np.float64))
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.dtype.kind in "iu" else (0, 1 << 16)
    if high - low < 1 << 16:
        # Every step is a function of the stored value alone: map each of the (at most 65,536)
        # stored values once and look the pixels up, about 5x faster than windowing 4 million
        # pixels in float64, and the same numbers.
        stored = np.arange(low, high + 1, dtype=np.int64).astype(pixels.dtype)
        return _windowed_8bit(stored, dataset, voi_range)[np.subtract(pixels, low, dtype=np.int32)]
    return _windowed_8bit(pixels, dataset, voi_range)


def _windowed_8bit(stored: np.ndarray, dataset, voi_range: tuple[float, float]) -> np.ndarray:
    """Stored values -> modality LUT -> VOI LUT or window -> its output range mapped to 0-255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(stored, dataset)
    if _uses_voi_lut(dataset):  # a LUT is indexed by the (integer) modality output
        values = np.rint(values).astype(np.int64)
    low, high = voi_range
    windowed = apply_voi_lut(values, dataset, index=0, prefer_lut=True).astype(np.float64)
    return (np.clip((windowed - low) / max(high - low, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def _colour_to_gray(pixels: np.ndarray, dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, dataset)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:  # 16-bit colour: scale, do not wrap
        pixels = _min_max_8bit(pixels.astype(np.float64))
    return np.array(Image.fromarray(pixels).convert("L"))


def radiograph_tags(path: Path) -> dict:
    """{'patient_id', 'view'} from a DICOM header ('' where absent; {} for other files). The
    patient id is stored as a hash (pseudonymised, not anonymised: a list of candidate ids can be
    hashed and matched), so a prepared folder groups by patient without copying the id."""
    return _dicom_tags(_read_dicom(path, pixels=False)) if is_dicom(path) else {}


def _dicom_tags(dataset) -> dict:
    patient = str(dataset.get("PatientID", "") or "").strip()
    return {"patient_id": "dicom:" + hashlib.sha256(patient.encode()).hexdigest()[:16] if patient else "",
            "view": str(dataset.get("ViewPosition", "") or "").strip().upper()}


def _read_dicom(path: Path, pixels: bool = True):
    try:
        import pydicom
    except ImportError:
        raise UserError(f"{path}: reading DICOM needs pydicom: pip install 'covid_ddp[dicom]' (or pip install pydicom)")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception as error:  # pydicom's InvalidDicomError, truncated files, ...
        raise UserError(f"{path}: not a readable DICOM file ({type_and_first_line(error)})")


def _voi_output_range(dataset) -> tuple[float, float] | None:
    """The range apply_voi_lut maps into: the VOI LUT's entries, or the window's output range
    (PS3.3 C.11.2.1.2: that of the modality LUT's output). None when the file has neither."""
    if _uses_voi_lut(dataset):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    bits = int(dataset.get("BitsStored", 16))
    if dataset.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None and not dataset.get("ModalityLUTSequence"):
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high


def _uses_voi_lut(dataset) -> bool:
    """pydicom's own condition for applying the VOI LUT rather than the window."""
    items = dataset.get("VOILUTSequence") or []
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _min_max_8bit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - low) / (high - low) * 255).round().astype(np.uint8)
