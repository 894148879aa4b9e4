"""Bad and unusual inputs to prediction: one clear line, exit 2, nothing half-written."""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
import pytest
import torch
from original_net import Net as OriginalNet
from original_net import trained_like
from PIL import Image

from covid_ddp import Net, load_model, predict
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.commands.predict import main as predict_main
from covid_ddp.models.net import raw_pixel_state_dict
from covid_ddp.models.weights import consolidated_state_dict


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> pathlib.Path:
    torch.manual_seed(0)
    model = Net()
    model.set_normalization(100.0, 50.0)
    path = tmp_path_factory.mktemp("weights") / "COVID_binary_classifier.pth"
    torch.save(raw_pixel_state_dict(consolidated_state_dict(model.state_dict()), model), path)
    return path


def run_predict(capsys, *argv) -> tuple[int, str, str]:
    code = predict_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def xray(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (the guard must refuse it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_non_image_file_is_named(capsys, weights, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = run_predict(capsys, "--weights", weights, tmp_path / "notes.png")
    assert_one_line_error(code, err, "notes.png", "not a readable image")


def test_a_corrupt_png_is_named(capsys, weights, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(xray()).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    code, _, err = run_predict(capsys, "--weights", weights, tmp_path / "cut.png")
    assert_one_line_error(code, err, "cut.png", "not a readable image")


def test_a_decompression_bomb_is_refused(capsys, weights, tmp_path):
    (tmp_path / "huge.png").write_bytes(huge_png_header(30000, 30000))
    code, _, err = run_predict(capsys, "--weights", weights, tmp_path / "huge.png")
    assert_one_line_error(code, err, "huge.png", "decompression-bomb")


def test_an_empty_folder_is_refused(capsys, weights, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_predict(capsys, "--weights", weights, tmp_path / "empty")
    assert_one_line_error(code, err, "empty", "holds no .npz, .png, .jpg or .dcm files")


def test_rgba_and_16_bit_images_are_converted_not_refused(capsys, weights, tmp_path):
    gray = xray(1)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    rgba[:8, :8, 3] = 0  # transparent corner: composited onto black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    wide = gray.astype(np.uint16) * 257  # 0..65535, so min-max scaling gives back `gray` (0 and 255 present)
    wide[0, 0], wide[0, 1] = 0, 65535
    Image.fromarray(wide).save(tmp_path / "deep.png")
    code, out, err = run_predict(capsys, "--weights", weights, tmp_path / "rgba.png", tmp_path / "deep.png")
    assert code == 0, err
    expected_rgba = gray.copy()
    expected_rgba[:8, :8] = 0
    expected_deep = gray.copy()
    expected_deep[0, 0], expected_deep[0, 1] = 0, 255
    scores = [float(line.split(",")[2]) for line in out.strip().splitlines()[1:]]
    np.testing.assert_allclose(scores, predict(load_model(weights), np.stack([expected_rgba, expected_deep])), atol=1e-6)


def test_a_dicom_folder_export_is_scored_like_its_pixels(capsys, weights, tmp_path):
    pytest.importorskip("pydicom")
    from dicom_files import write_dicom

    gray = xray(2)
    stored = gray.astype(np.uint16) * 16  # 12-bit, 0..4080; no window: min-max back to `gray`
    stored[0, 0], stored[0, 1] = 0, 4080
    write_dicom(tmp_path / "export" / "IM0001", stored, photometric="MONOCHROME1")  # no suffix, inverted
    code, out, err = run_predict(capsys, "--weights", weights, tmp_path / "export")
    assert code == 0, err
    expected = 255 - gray
    expected[0, 0], expected[0, 1] = 255, 0
    score = float(out.strip().splitlines()[1].split(",")[2])
    assert score == pytest.approx(float(predict(load_model(weights), expected[None])[0]), abs=1e-6)


def test_resized_images_get_one_line_naming_their_own_sizes(capsys, weights, tmp_path):
    """One line for a folder, not one per image; a large JPEG's own size, not that of its reduced
    decode (Pillow's draft: 256x256 for this 512x512 one)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(xray()).save(folder / "a.png")  # 64x64: used as it is
    Image.fromarray(xray()).resize((512, 512)).save(folder / "b.jpg", quality=90)
    for index, (height, width) in enumerate([(200, 300), (240, 300), (300, 300)]):
        Image.fromarray(xray(index)).resize((width, height)).save(folder / f"c{index}.png")
    code, out, err = run_predict(capsys, "--weights", weights, folder)
    assert code == 0 and len(out.strip().splitlines()) == 1 + 5, err
    assert [line for line in err.splitlines() if "resized" in line] == [
        "covid-ddp-predict: 4 images were resized to 64x64, the weights' size (from 300x200 to 512x512; non-square ones "
        "center-cropped to a square first)"]
    assert "256x256" not in err
    code, _, err = run_predict(capsys, "--weights", weights, folder / "b.jpg")
    assert "1 image was resized to 64x64, the weights' size (from 512x512)\n" in err


def test_first_bad_input_stops_the_run_and_writes_nothing(capsys, weights, tmp_path):
    Image.fromarray(xray()).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.png").write_text("junk")
    output = tmp_path / "scores.csv"
    code, out, err = run_predict(capsys, "--weights", weights, "--output", output, tmp_path / "a_good.png",
                                 tmp_path / "b_bad.png")
    assert_one_line_error(code, err, "b_bad.png")
    assert out == "" and not output.exists()


def test_skip_errors_reports_each_bad_input_and_scores_the_rest(capsys, weights, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(xray(2)).save(folder / "a.png")
    (folder / "b.png").write_text("junk")
    np.savez(folder / "c.npz", wrong_key=np.zeros((2, 64, 64), np.uint8))
    Image.fromarray(xray(3)).save(folder / "d.jpg", quality=95)
    code, out, err = run_predict(capsys, "--weights", weights, "--skip-errors", folder)
    assert code == 0
    assert [line.split(",")[0].rsplit("/", 1)[-1] for line in out.strip().splitlines()[1:]] == ["a.png", "d.jpg"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2 and "b.png" in skipped[0] and "c.npz" in skipped[1]
    assert "skipped 2 of 4 inputs" in err


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_and_does_not_run(capsys, tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(marker)}, evil)
    Image.fromarray(xray()).save(tmp_path / "x.png")
    code, _, err = run_predict(capsys, "--weights", evil, tmp_path / "x.png")
    assert_one_line_error(code, err, "evil.pth", "refused", "pickled Python objects")
    assert not marker.exists(), "the pickle payload must not run"


def test_weights_of_another_architecture_list_the_keys(capsys, weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["extra.weight"] = state.pop("fc2.weight")
    torch.save(state, tmp_path / "other.pth")
    Image.fromarray(xray()).save(tmp_path / "x.png")
    code, _, err = run_predict(capsys, "--weights", tmp_path / "other.pth", tmp_path / "x.png")
    assert_one_line_error(code, err, "other.pth", "missing keys: fc2.weight", "unexpected keys: extra.weight")


def test_a_truncated_weights_file_is_named(capsys, weights, tmp_path):
    (tmp_path / "cut.pth").write_bytes(weights.read_bytes()[:1000])
    Image.fromarray(xray()).save(tmp_path / "x.png")
    code, _, err = run_predict(capsys, "--weights", tmp_path / "cut.pth", tmp_path / "x.png")
    assert_one_line_error(code, err, "cut.pth", "not a loadable weights file")


def test_a_text_file_given_as_weights_says_what_it_is(capsys, tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    Image.fromarray(xray()).save(tmp_path / "x.png")
    code, _, err = run_predict(capsys, "--weights", tmp_path / "notes.pth", tmp_path / "x.png")
    assert_one_line_error(code, err, "notes.pth", "not a PyTorch weights file", "zip archive")
    assert "pop from empty list" not in err


def test_weights_written_by_the_original_script_score_as_its_own_class_does(capsys, tmp_path):
    """covid-ddp-predict and covid-ddp-evaluate take the original script's .pth as it is."""
    original = trained_like(OriginalNet(), seed=5)
    path = tmp_path / "COVID_binary_classifier.pth"
    torch.save(original.state_dict(), path)  # what the original script writes
    images = np.stack([xray(seed) for seed in range(6)])
    np.savez(tmp_path / "six.npz", train_images=images)
    code, out, err = run_predict(capsys, "--weights", path, "--device", "cpu", tmp_path / "six.npz")
    assert code == 0, err
    scored = np.array([float(line.split(",")[2]) for line in out.strip().splitlines()[1:]])
    with torch.no_grad():
        expected = original(torch.from_numpy(images).float().unsqueeze(1))[:, 1].exp().numpy()
    assert np.abs(scored - expected).max() < 1e-5

    labels = np.eye(4, dtype=np.float32)[[0, 2, 1, 3, 0, 2]]
    np.savez(tmp_path / "train_images64.npz", train_images=images)
    np.savez(tmp_path / "train_labels.npz", train_labels=labels)
    assert evaluate_main(["--weights", str(path), "--data-dir", str(tmp_path), "--split", "all",
                          "--bootstrap", "0", "--output-dir", str(tmp_path / "eval")]) == 0
    capsys.readouterr()


def test_weights_of_earlier_covid_ddp_versions_still_load(tmp_path):
    """They carried the training split's normalisation as pixel_mean / pixel_std."""
    model = trained_like(Net(), seed=6)
    model.set_normalization(90.0, 35.0)
    old_format = {**model.state_dict(), "pixel_mean": torch.tensor(90.0), "pixel_std": torch.tensor(35.0)}
    torch.save(old_format, tmp_path / "old.pth")
    pixels = torch.randint(0, 256, (5, 1, 64, 64)).float()
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "old.pth")(pixels), model(pixels), rtol=0, atol=1e-4)


class NotNumpyConvertible(torch.Tensor):
    """A tensor NumPy cannot read, as a CUDA tensor is (np.asarray raises TypeError): the CPU stand-in for
    a set held on the GPU."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def test_predict_scores_a_tensor_where_it_is_without_numpy(weights):
    model = load_model(weights)
    pixels = np.stack([xray(seed) for seed in range(5)])
    from_numpy = predict(model, pixels, batch_size=2)
    on_device = torch.from_numpy(pixels).as_subclass(NotNumpyConvertible)
    from_tensor = predict(model, on_device, batch_size=2)
    assert isinstance(from_tensor, np.ndarray) and from_tensor.shape == (5,)
    np.testing.assert_array_equal(from_tensor, from_numpy)
    np.testing.assert_array_equal(predict(model, on_device[:, None], batch_size=2), from_numpy)  # (N, 1, S, S)


def test_many_files_are_decoded_in_parallel_and_scored_in_batches_across_files(capsys, weights, tmp_path):
    """Files from two worker processes and batches that span files (an .npz's rows split over two)
    give the rows, order and scores of scoring each file alone in this process."""
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(13):
        Image.fromarray(xray(index)).save(folder / f"{index:02d}.png")
    np.savez(folder / "05b.npz", train_images=np.stack([xray(20 + k) for k in range(5)]))
    _, one_by_one, _ = run_predict(capsys, "--weights", weights, "--workers", "1", "--batch-size", "1", folder)
    output = tmp_path / "scores.csv"
    code, out, _ = run_predict(capsys, "--weights", weights, "--workers", "2", "--batch-size", "4",
                               "--output", output, folder)
    assert code == 0 and out == ""
    streamed = output.read_text().splitlines()
    assert len(streamed) == 1 + 13 + 5 and [line.split(",")[0].rsplit("/", 1)[-1] for line in streamed[6:12]] == \
        ["05.png", "05b.npz", "05b.npz", "05b.npz", "05b.npz", "05b.npz"]
    expected = [line.split(",") for line in one_by_one.splitlines()]
    got = [line.split(",") for line in streamed]
    assert [row[:2] + row[3:] for row in got] == [row[:2] + row[3:] for row in expected]
    assert all(abs(float(a[2]) - float(b[2])) < 1e-5 for a, b in zip(got[1:], expected[1:]))


def test_a_cpu_scores_in_batches_that_stay_in_its_cache():
    """A CPU scores Net 2x faster in batches of 32 than of 100 at 64 px, and at 224 px batches of 512
    peak at 6.7 GB: the default keeps a batch's pixels to 32 images of 64x64 there, and leaves a GPU
    its 512."""
    from covid_ddp.models.inference import batch_size_for

    assert [batch_size_for(size, "cpu") for size in (32, 64, 128, 224, 4096)] == [128, 32, 8, 2, 1]
    assert batch_size_for(224, "cuda") == 512
