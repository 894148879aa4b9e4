"""Reading radiograph files: PNG/JPEG in every bit depth and mode, DICOM's LUTs and photometrics."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_files import needs_pydicom, write_dicom
from PIL import Image

from covid_ddp.data.radiographs import radiograph_tags, read_grayscale, read_grayscale_and_size, read_radiograph
from covid_ddp.errors import UserError

RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (256, 1))  # 256 x 256, stored values 0..4080


def nearly_flat(shape: tuple[int, int], level: int) -> np.ndarray:
    """A flat picture with a bright mark in its top-left corner (cropped away from a tall one): a
    wholly flat one is refused as blank."""
    pixels = np.full(shape, level, dtype=np.uint8)
    pixels[:16, :16] = 200
    return pixels


def test_a_64px_grayscale_png_is_read_unchanged(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "x.png"), image)


def test_pictures_are_cropped_to_the_centre_square_and_resized_with_lanczos(tmp_path):
    wide = np.zeros((300, 500), dtype=np.uint8)
    wide[:, 100:400] = 200  # the centre 300x300 square is uniform: the sides are cropped away
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert (read_radiograph(tmp_path / "wide.png") == 200).all()


@pytest.mark.parametrize("mode", ["I;16", "RGB", "RGBA", "LA"])
def test_every_picture_mode_becomes_8bit_grayscale(tmp_path, mode):
    gray = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    if mode == "I;16":
        picture = Image.fromarray((gray.astype(np.uint16) * 100 + 1000))  # 16-bit: min-max scaled to 0-255
    else:
        picture = Image.fromarray(gray).convert(mode)
    picture.save(tmp_path / "x.png")
    image = read_radiograph(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert np.abs(image.astype(int) - gray).max() <= 1


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3], rgba[:, :32, 3], rgba[:, 32:, 3] = 255, 255, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    image = read_radiograph(tmp_path / "x.png")
    assert (image[:, :32] == 255).all() and (image[:, 32:] == 0).all()


def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path):
    pixels = np.full((64, 64), 30, dtype=np.uint8)
    pixels[:16] = 220  # the top band bright as stored; orientation 6: viewers turn it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    shown = read_radiograph(tmp_path / "phone.jpg").astype(int)
    assert shown[:, -12:].mean() > 180 and shown[:, :40].mean() < 60, "the bright band is on the right, as shown"


def test_a_malformed_exif_tag_beside_the_orientation_does_not_make_the_picture_unreadable(tmp_path):
    import struct

    pixels = np.full((64, 64), 30, dtype=np.uint8)
    pixels[:16] = 220
    # A raw EXIF block: orientation 6, and ColorMap (0x0140, numbers) written as text, which
    # Pillow's exif_transpose fails on when it writes the EXIF back.
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    tiff += struct.pack("<HHI", 0x0140, 2, 4) + b"oop\x00" + struct.pack("<I", 0)
    Image.fromarray(pixels).save(tmp_path / "odd.jpg", quality=95, exif=b"Exif\x00\x00" + tiff)
    shown = read_radiograph(tmp_path / "odd.jpg").astype(int)
    assert shown[:, -12:].mean() > 180, "read, and still turned"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_of_at_least_256px(tmp_path):
    Image.fromarray(nearly_flat((2400, 2000), 90)).save(tmp_path / "big.jpg", quality=95)
    assert min(read_grayscale(tmp_path / "big.jpg").size) >= 256
    assert np.abs(read_radiograph(tmp_path / "big.jpg").astype(int) - 90).max() <= 2


def test_a_large_jpegs_own_size_is_known_though_it_is_decoded_smaller(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it a quarter: 800 wide, 1200 high
    Image.fromarray(nearly_flat((800, 1200), 90)).save(tmp_path / "big.jpg", quality=90, exif=exif)
    gray, size = read_grayscale_and_size(tmp_path / "big.jpg")
    assert gray.size == (400, 600), "decoded at half scale, then turned"
    assert size == (800, 1200)
    Image.fromarray(nearly_flat((200, 300), 90)).save(tmp_path / "small.png")
    assert read_grayscale_and_size(tmp_path / "small.png")[1] == (300, 200)


@needs_pydicom
def test_dicom_without_a_window_is_min_max_scaled_and_monochrome1_is_inverted(tmp_path):
    plain = np.asarray(read_grayscale(write_dicom(tmp_path / "a.dcm", RAMP)))
    assert plain.min() == 0 and plain.max() == 255 and (np.diff(plain[0].astype(int)) >= 0).all()
    inverted = np.asarray(read_grayscale(write_dicom(tmp_path / "b.dcm", RAMP, photometric="MONOCHROME1")))
    np.testing.assert_array_equal(inverted, 255 - plain)


@needs_pydicom
def test_dicom_window_after_the_rescale_maps_the_window_to_0_255(tmp_path):
    # Stored v -> 2v - 1000 (modality LUT), then the window 3000 +/- 1000: 2000 -> 0, 4000 -> 255.
    path = write_dicom(tmp_path / "w.dcm", RAMP, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=3000, WindowWidth=2000)
    row = np.asarray(read_grayscale(path))[0].astype(int)
    rescaled = 2 * RAMP[0].astype(int) - 1000
    assert (row[rescaled <= 2000] == 0).all() and (row[rescaled >= 4000] == 255).all()
    inside = (rescaled > 2100) & (rescaled < 3900)
    expected = (rescaled[inside] - 2000) / 2000 * 255
    assert np.abs(row[inside] - expected).max() <= 1.5


@needs_pydicom
@pytest.mark.parametrize("signed", [False, True])
def test_windowing_through_a_table_of_stored_values_equals_windowing_every_pixel(tmp_path, signed):
    import pydicom

    from covid_ddp.data.radiographs import _grayscale_to_8bit, _voi_output_range, _windowed_8bit

    stored = np.random.default_rng(0).integers(0, 4096, (300, 200))
    stored = (stored - 2048).astype(np.int16) if signed else stored.astype(np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=16 if signed else 12, RescaleSlope=2,
                       RescaleIntercept=-1000, WindowCenter=1500, WindowWidth=2500)
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    np.testing.assert_array_equal(_grayscale_to_8bit(pixels, dataset),
                                  _windowed_8bit(pixels, dataset, _voi_output_range(dataset)))


@needs_pydicom
def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    import pydicom

    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 12]  # 4096 entries from stored value 0, 12-bit output
    lut.LUTData = (4095 - np.arange(4096)).astype("<u2").tobytes()  # a reversing LUT
    path = write_dicom(tmp_path / "lut.dcm", RAMP, VOILUTSequence=pydicom.Sequence([lut]))
    row = np.asarray(read_grayscale(path))[0].astype(int)
    assert row[0] == 255 and row[-1] <= 1 and (np.diff(row) <= 0).all()


@needs_pydicom
def test_signed_16bit_dicom(tmp_path):
    signed = (RAMP.astype(np.int32) - 2048).astype(np.int16)
    image = np.asarray(read_grayscale(write_dicom(tmp_path / "s.dcm", signed, bits_stored=16)))
    assert image[0, 0] == 0 and image[0, -1] == 255


@needs_pydicom
def test_a_file_without_suffix_is_recognised_as_dicom_and_its_tags_read(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RAMP, PatientID="HOSP-123", ViewPosition="AP")
    assert read_radiograph(path).shape == (64, 64)
    tags = radiograph_tags(path)
    assert tags["view"] == "AP" and tags["patient_id"].startswith("dicom:") and "HOSP-123" not in tags["patient_id"]
    assert radiograph_tags(write_dicom(tmp_path / "IM0002", RAMP, PatientID="HOSP-123"))["patient_id"] == tags["patient_id"]


@pytest.mark.parametrize("content, message", [(b"\x89PNG\r\n\x1a\n broken", "not a readable image"),
                                              (b"not an image at all", "not a readable")])
def test_unreadable_files_are_a_one_line_error_naming_the_file(tmp_path, content, message):
    for name in ("x.png", "x.dcm"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError) as raised:
            read_radiograph(tmp_path / name)
        assert str(tmp_path / name) in str(raised.value) and "\n" not in str(raised.value)
        assert message in str(raised.value) or name.endswith(".dcm")


@needs_pydicom
@pytest.mark.parametrize("content", [b"\0" * 2000, b"\0" * 128 + b"DICM" + bytes(range(256)) * 2,
                                     b"not an image at all"])
def test_a_dcm_file_without_pixel_data_is_named_as_holding_no_image(tmp_path, content):
    """pydicom reads (forced) junk as an empty data set; its own complaint would be a missing
    Transfer Syntax UID, which tells the user nothing."""
    (tmp_path / "x.dcm").write_bytes(content)
    with pytest.raises(UserError, match=r"x\.dcm: no image in it \(no DICOM pixel data\): a damaged file, or not a "
                                        r"DICOM file at all$"):
        read_radiograph(tmp_path / "x.dcm")


@needs_pydicom
@pytest.mark.parametrize("implicit_vr", [True, False])
def test_a_dicom_without_its_header_reads_as_the_same_image(tmp_path, implicit_vr):
    """Old archives keep the bare data set (no preamble, no file meta): its transfer syntax is the
    encoding it was read in."""
    import pydicom

    whole = write_dicom(tmp_path / "whole.dcm", RAMP, WindowCenter=2000, WindowWidth=3000)
    dataset = pydicom.dcmread(whole)
    del dataset.file_meta
    dataset.preamble = None
    dataset.save_as(tmp_path / "bare.dcm", implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_radiograph(tmp_path / "bare.dcm"), read_radiograph(whole))
