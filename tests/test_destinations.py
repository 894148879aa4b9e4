"""No command writes over what it did not make: its inputs, the weights, a user's files, or into a
folder it reads from. Each refusal is one line, exit 2, with the file left byte for byte as it was.
(covid-ddp-prepare's folder rules are in tests/test_prepare.py.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_SCRIPT, refused, write_mcfam
from original_net import Net as OriginalNet
from original_net import trained_like
from PIL import Image

from covid_ddp.commands.audit import main as audit_main
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.commands.export import main as export_main
from covid_ddp.commands.predict import main as predict_main
from covid_ddp.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    pixels, labels = make_synthetic(6, seed=1)
    return write_mcfam(tmp_path / "data", pixels, labels) / "train_images64.npz"


def user_file(path: Path, text: str = "the user's own words") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.read_bytes()


# --- covid-ddp-predict ----------------------------------------------------------------------------


def test_predict_never_writes_its_csv_over_the_weights_their_sidecar_or_an_input(weights, images, capsys):
    before = weights.read_bytes()
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(weights), str(images)]),
            "--output", "is also an input")
    assert weights.read_bytes() == before
    sidecar = weights.with_suffix(".json")
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(sidecar), str(images)]), "is also an input")
    assert not sidecar.exists()
    data = images.read_bytes()
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(images), str(images)]), "is also an input")
    assert images.read_bytes() == data


def test_predict_replaces_its_own_csv_and_no_other_file(weights, images, tmp_path, capsys):
    notes = tmp_path / "notes.csv"
    mine = user_file(notes, "name,score\nalice,3\n")
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(notes), str(images)]),
            "exists and is not a CSV covid-ddp-predict wrote", "left as it is")
    assert notes.read_bytes() == mine
    csv = tmp_path / "predictions.csv"
    assert predict_main(["--weights", str(weights), "--output", str(csv), str(images)]) == 0
    assert predict_main(["--weights", str(weights), "--output", str(csv), str(images)]) == 0, "its own: replaced"
    assert len(csv.read_text().splitlines()) == 7


def test_predict_writes_no_overlay_inside_an_input_folder(weights, tmp_path, capsys):
    folder = tmp_path / "covid"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.full((64, 64), 60 * index + 40, np.uint8)).save(folder / f"x{index}.png")
    refused(capsys, predict_main(["--weights", str(weights), "--gradcam", str(folder / "gc"), str(folder)]),
            "--gradcam", "lies inside the input folder")
    refused(capsys, predict_main(["--weights", str(weights), "--gradcam", str(folder), str(folder)]),
            "is also an input")
    assert sorted(p.name for p in folder.rglob("*")) == ["x0.png", "x1.png"], "a later prepare would read overlays"


def test_predict_replaces_its_own_overlays_but_no_picture_of_the_users(weights, images, tmp_path, capsys):
    overlays = tmp_path / "gradcam"
    assert predict_main(["--weights", str(weights), "--gradcam", str(overlays), str(images)]) == 0
    assert predict_main(["--weights", str(weights), "--gradcam", str(overlays), str(images)]) == 0, "its own"
    capsys.readouterr()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(overlays / "train_images64_0.png")  # the user's, same name
    picture = (overlays / "train_images64_0.png").read_bytes()
    refused(capsys, predict_main(["--weights", str(weights), "--gradcam", str(overlays), str(images)]),
            "train_images64_0.png", "covid-ddp-predict did not write")
    assert (overlays / "train_images64_0.png").read_bytes() == picture


# --- covid-ddp-export ------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the export extra is not installed")
def test_export_replaces_its_own_onnx_file_and_no_other(weights, tmp_path, capsys):
    other = tmp_path / "their.onnx"
    theirs = user_file(other, "not a model of ours")
    refused(capsys, export_main(["--weights", str(weights), "--onnx", str(other)]),
            "exists and is not an ONNX model covid-ddp-export wrote")
    assert other.read_bytes() == theirs
    ours = tmp_path / "covid.onnx"
    assert export_main(["--weights", str(weights), "--onnx", str(ours)]) == 0
    assert export_main(["--weights", str(weights), "--onnx", str(ours)]) == 0, "its own: replaced"


# --- covid-ddp-evaluate and covid-ddp-audit ----------------------------------------------------------


def test_evaluate_writes_no_file_over_a_users_and_nothing_into_its_data_folder(weights, images, tmp_path, capsys):
    data = images.parent
    folder = tmp_path / "results"
    mine = user_file(folder / "evaluation.json", '{"my": "notes"}')
    flags = ["--weights", str(weights), "--data-dir", str(data), "--split", "all", "--bootstrap", "0"]
    refused(capsys, evaluate_main([*flags, "--output-dir", str(folder)]), "evaluation.json",
            "covid-ddp-evaluate did not write")
    assert (folder / "evaluation.json").read_bytes() == mine and sorted(p.name for p in folder.iterdir()) == [
        "evaluation.json"]
    refused(capsys, evaluate_main([*flags, "--output-dir", str(data)]), "is also an input")
    assert sorted(p.name for p in data.iterdir()) == ["train_images64.npz", "train_labels.npz"]
    assert evaluate_main([*flags, "--output-dir", str(tmp_path / "ours")]) == 0
    assert evaluate_main([*flags, "--output-dir", str(tmp_path / "ours")]) == 0, "its own folder: replaced"


def test_audit_writes_no_file_over_a_users(weights, images, tmp_path, capsys):
    folder = tmp_path / "audit"
    mine = user_file(folder / "audit.md", "# my audit notes")
    refused(capsys, audit_main(["--weights", str(weights), "--data-dir", str(images.parent), "--split", "all",
                                "--output-dir", str(folder)]), "audit.md", "covid-ddp-audit did not write")
    assert (folder / "audit.md").read_bytes() == mine


# --- covid-ddp-train --------------------------------------------------------------------------------


def test_training_into_its_own_data_folder_is_refused_before_anything_is_written(images, tmp_path):
    data = images.parent
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--data-dir", str(data), "--output-dir", str(data),
                           "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output-dir" in lines[0] and "is also an input" in lines[0], done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["train_images64.npz", "train_labels.npz"]



# --- a destination that cannot be made, found before the work ---------------------------------------


def test_a_path_under_a_file_is_refused_before_any_work(weights, images, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("the user's")
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(afile / "x.csv"), str(images)]),
            "--output", "is a file, not a folder")
    from covid_ddp.commands.prepare import main as prepare_main

    sources = tmp_path / "clinic" / "covid"
    sources.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(sources / "0.png")
    refused(capsys, prepare_main(["--output-dir", str(afile / "sub"), str(tmp_path / "clinic")]),
            "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "clinic", "data"], "no staging folder left"


def test_report_checks_its_launcher_and_folder_before_reading_or_training(images, tmp_path, capsys):
    from covid_ddp.commands.report import main as report_main

    data = str(images.parent)  # (without sources: read later, so these come first)
    refused(capsys, report_main(["--data-dir", data, "--output-dir", str(tmp_path / "r"), "--launcher", "nosuch"]),
            "--launcher 'nosuch': no command 'nosuch'")
    (tmp_path / "afile").write_text("x")
    refused(capsys, report_main(["--data-dir", data, "--output-dir", str(tmp_path / "afile")]), "is a file")
    refused(capsys, report_main(["--data-dir", data, "--output-dir", data]), "is also an input")
    assert not (tmp_path / "r").exists()


def test_a_file_where_a_folder_goes_and_a_folder_where_a_file_goes_are_named(weights, images, tmp_path, capsys):
    (tmp_path / "scores.csv").mkdir()
    refused(capsys, predict_main(["--weights", str(weights), "--output", str(tmp_path / "scores.csv"), str(images)]),
            "is a folder; give a file name")
    (tmp_path / "results").write_text("the user's")
    refused(capsys, evaluate_main(["--weights", str(weights), "--data-dir", str(images.parent), "--split", "all",
                                   "--output-dir", str(tmp_path / "results")]), "is a file; give a folder")
    assert (tmp_path / "results").read_text() == "the user's"
