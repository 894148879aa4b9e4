"""DICOM files written by the tests themselves (pydicom), as a hospital export would hold them.

pydicom is imported only inside ``write_dicom``, so a test file can import this module whole and
mark just its DICOM tests ``needs_pydicom``: its PNG/JPEG tests run where pydicom is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None,
                                   reason="DICOM needs pydicom (pip install 'covid_ddp[dicom]')")


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                **tags) -> Path:
    """An uncompressed single-frame DICOM of ``pixels`` (uint16, or int16 for signed) with ``tags``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    for name, value in tags.items():
        setattr(dataset, name, value)
    dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return Path(path)
