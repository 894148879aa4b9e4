"""Inputs that cannot mean anything are refused by name, not scored or trained on in silence:
weights holding NaN or Inf, blank images (one gray level, a few pixels, a DICOM whose rescale
slope is 0), a training part of blank images. Each refusal is one line and exit 2."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TRAIN_SCRIPT, refused, write_mcfam
from dicom_files import needs_pydicom, write_dicom
from original_net import Net as OriginalNet
from original_net import trained_like
from PIL import Image

from covid_ddp.commands.audit import main as audit_main
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.commands.export import main as export_main
from covid_ddp.commands.predict import main as predict_main
from covid_ddp.commands.prepare import main as prepare_main
from covid_ddp.data.synthetic import make_synthetic

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    return path


@pytest.fixture
def images(tmp_path):
    pixels, labels = make_synthetic(6, seed=1)
    return write_mcfam(tmp_path / "data", pixels, labels) / "train_images64.npz"


def picture(path, pixels: np.ndarray):
    Image.fromarray(pixels).save(path)
    return path


# --- blank images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, pixels, fragment", [
    ("black.png", np.zeros((256, 256), np.uint8), "a blank image (every pixel is 0)"),
    ("white.png", np.full((256, 256), 255, np.uint8), "a blank image (every pixel is 255)"),
    ("dot.png", np.full((1, 1), 90, np.uint8), "1x1 pixels is too small to be a radiograph"),
])
def test_predict_refuses_a_blank_image_file_and_skip_errors_scores_the_rest(weights, tmp_path, capsys, name, pixels,
                                                                           fragment):
    blank = picture(tmp_path / name, pixels)
    good = picture(tmp_path / "good.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    refused(capsys, predict_main(["--weights", str(weights), str(good), str(blank)]), str(blank), fragment)
    assert predict_main(["--weights", str(weights), "--skip-errors", str(good), str(blank)]) == 0
    captured = capsys.readouterr()
    assert [row.split(",")[0] for row in captured.out.splitlines()[1:]] == [str(good)]
    assert f"skipped: {blank}" in captured.err and fragment in captured.err


@needs_pydicom
def test_a_dicom_whose_rescale_slope_is_zero_is_blank(weights, tmp_path, capsys):
    pixels = RNG.integers(0, 4096, (64, 64)).astype(np.uint16)
    scan = write_dicom(tmp_path / "flat.dcm", pixels, RescaleSlope=0, RescaleIntercept=0)
    refused(capsys, predict_main(["--weights", str(weights), str(scan)]), str(scan), "a blank image")


def test_blank_rows_of_an_array_are_scored_and_named_in_one_warning(weights, tmp_path, capsys):
    pixels = RNG.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    pixels[1] = 0
    pixels[3] = 17
    np.savez(tmp_path / "set.npz", train_images=pixels)
    assert predict_main(["--weights", str(weights), str(tmp_path / "set.npz")]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5
    warnings = [line for line in captured.err.splitlines() if "blank" in line]
    assert warnings == ["covid-ddp-predict: warning: 2 image(s) are blank, a single gray level (set.npz[1], "
                        "set.npz[3]): their p_covid is the model's reading of nothing"]


def test_prepare_names_a_blank_file_and_skip_errors_prepares_the_rest(tmp_path, capsys):
    for label in ("normal", "covid"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for index in range(2):
            picture(tmp_path / "set" / label / f"{index}.png", RNG.integers(0, 256, (80, 80), dtype=np.uint8))
    blank = picture(tmp_path / "set" / "covid" / "export-error.png", np.zeros((80, 80), np.uint8))
    refused(capsys, prepare_main(["--output-dir", str(tmp_path / "out"), "--workers", "1", str(tmp_path / "set")]),
            str(blank), "a blank image")
    assert not (tmp_path / "out").exists()
    assert prepare_main(["--output-dir", str(tmp_path / "out"), "--workers", "1", "--skip-errors",
                         str(tmp_path / "set")]) == 0
    from covid_ddp.data.folders import load_data_dir

    assert len(load_data_dir(tmp_path / "out").images) == 4


def test_training_on_blank_images_only_is_refused_in_one_line(tmp_path):
    _, labels = make_synthetic(60, seed=2)
    levels = np.arange(60, dtype=np.uint8)[:, None, None] * 4  # each image one gray level, all different
    data = write_mcfam(tmp_path / "data", np.broadcast_to(levels, (60, 64, 64)).copy(), labels)
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--data-dir", str(data), "--output-dir",
                           str(tmp_path / "run"), "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines()]
    assert len(lines) == 1 and re.search(r"all \d+ training images are blank", lines[0]), done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["train_images64.npz", "train_labels.npz"]


# --- weights that cannot score ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_by_every_command_that_reads_weights(tmp_path, images, capsys, bad):
    state = trained_like(OriginalNet(), seed=0).state_dict()
    state["fc2.weight"][0, 0] = bad
    weights = tmp_path / "diverged.pth"
    torch.save(state, weights)
    commands = {
        "predict": lambda: predict_main(["--weights", str(weights), str(images)]),
        "evaluate": lambda: evaluate_main(["--weights", str(weights), "--data-dir", str(images.parent), "--split",
                                           "all", "--bootstrap", "0", "--output-dir", str(tmp_path / "evaluation")]),
        "audit": lambda: audit_main(["--weights", str(weights), "--data-dir", str(images.parent), "--split", "all",
                                     "--output-dir", str(tmp_path / "audit")]),
    }
    if importlib.util.find_spec("onnxscript") is not None:  # the export extra
        commands["export"] = lambda: export_main(["--weights", str(weights), "--onnx", str(tmp_path / "x.onnx")])
    for name, command in commands.items():
        refused(capsys, command(), str(weights), "NaN or Inf", "'fc2.weight'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "diverged.pth"], "nothing written"


def test_init_weights_holding_nan_are_refused_before_training(tmp_path):
    from covid_ddp.errors import UserError
    from covid_ddp.models.weights import refuse_non_finite

    wrapped = {"state_dict": {"conv1.weight": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(UserError, match="'state_dict.conv1.weight'"):
        refuse_non_finite(wrapped, tmp_path / "init.pth")
    assert refuse_non_finite({"epoch": 3, "w": torch.ones(2)}, tmp_path / "init.pth")["epoch"] == 3


@pytest.mark.parametrize("mean, std, shapes", [(torch.zeros(3), torch.ones(()), "(3,) and ()"),
                                               (torch.zeros(()), torch.zeros(()), "() and ()")])
def test_old_weights_whose_normalisation_is_not_one_mean_and_one_spread_are_refused(tmp_path, images, capsys, mean,
                                                                                     std, shapes):
    """covid_ddp < 0.2 stored the pixel mean and spread beside Net's weights (folded into conv1 on
    load); a vector there, or a spread of 0 (infinite weights), is no file covid_ddp wrote."""
    state = trained_like(OriginalNet(), seed=0).state_dict()
    state.update(pixel_mean=mean, pixel_std=std)
    weights = tmp_path / "old.pth"
    torch.save(state, weights)
    refused(capsys, predict_main(["--weights", str(weights), str(images)]), str(weights),
            f"pixel_mean/pixel_std are not one mean and one positive spread (shapes {shapes})")
    refused(capsys, evaluate_main(["--weights", str(weights), "--data-dir", str(images.parent), "--split", "all",
                                   "--bootstrap", "0", "--output-dir", str(tmp_path / "evaluation")]), str(weights))
    assert not (tmp_path / "evaluation").exists()
