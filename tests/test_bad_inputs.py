"""The bad-input suite: what a careless user or a hostile file hands each command, command by command.

Every case runs the command in-process on a copy of one workspace (data, weights, pictures,
CSVs, a user's own folder) and holds it to the standard of issue 28: exit 2, exactly one line
naming the problem, no traceback, and the workspace byte for byte as it was (nothing written,
nothing lost). Each case is tagged with what the command did with it at commit 4958148, before
issue 28 (``CATEGORIES``; measured by running this file against that commit); docs/testing.md
gives the counts (``python tests/test_bad_inputs.py`` prints them; ``tests/test_docs.py`` keeps
them in step). Cases that need a multi-process job or a signal live beside their kin in
test_faults.py, test_interruptions.py and test_prepare.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import write_mcfam
from original_net import Net as OriginalNet
from original_net import trained_like
from PIL import Image

from covid_ddp.commands.audit import main as audit_main
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.commands.export import main as export_main
from covid_ddp.commands.predict import main as predict_main
from covid_ddp.commands.prepare import main as prepare_main
from covid_ddp.commands.report import main as report_main
from covid_ddp.commands.train import main as train_main
from covid_ddp.data.synthetic import make_synthetic

COMMANDS = {"train": train_main, "predict": predict_main, "evaluate": evaluate_main, "audit": audit_main,
            "export": export_main, "prepare": prepare_main, "report": report_main}
CATEGORIES = {  # what each case did at commit 4958148
    "data loss": "wrote over or deleted a file the command did not make",
    "silent": "gave a wrong result or mixed outputs into inputs, exit 0",
    "hang": "never ended",
    "traceback": "ended in a Python traceback",
    "debris": "refused, but left files behind",
    "unclear": "refused with a line that blamed the wrong thing",
    "held": "was already refused in one line (kept so it stays so)",
}


@dataclass(frozen=True)
class Case:
    command: str
    name: str
    argv: tuple[str, ...]  # "{ws}" is the workspace
    says: str  # a fragment of the one line
    category: str
    arrange: Callable[[Path], None] | None = None  # what the case adds to its copy of the workspace


def case(command: str, name: str, argv: str, says: str, category: str, arrange=None) -> Case:
    assert category in CATEGORIES, category
    return Case(command, name, tuple(argv.split()), says, category, arrange)


def _fifo_in_a_csv(ws: Path) -> None:
    """Opening a FIFO waits for a writer forever."""
    os.mkfifo(ws / "csv" / "pipe.png")
    (ws / "csv" / "fifo.csv").write_text("path,label\npictures/covid/0.png,covid\npipe.png,normal\n")


DATA = "--data-dir {ws}/data"
SCORE = "--data-dir {ws}/data --split all"  # weights without their run folder
TRAIN = f"--cpu {DATA} --epochs 1 --batch-size 20 --output-dir {{ws}}/run"
WEIGHTS = "--weights {ws}/weights.pth"

CASES = [
    # --- covid-ddp-train ------------------------------------------------------------------------
    case("train", "--lr nan", f"{TRAIN} --lr nan", "--lr must be", "traceback"),
    case("train", "--lr-factor nan", f"{TRAIN} --lr-factor nan", "--lr-factor", "silent"),
    case("train", "--lr-patience -5", f"{TRAIN} --lr-patience -5", "--lr-patience", "silent"),
    case("train", "--dist-timeout nan", f"{TRAIN} --dist-timeout nan", "--dist-timeout", "traceback"),
    case("train", "--image-size 100000", f"{TRAIN} --image-size 100000", "between 8 and 1024", "traceback"),
    case("train", "--output-dir is the --data-dir", f"--cpu {DATA} --output-dir {{ws}}/data", "is also an input",
         "silent"),
    case("train", "--batch-size larger than the training part", f"{TRAIN} --batch-size 100000",
         "fewer than --batch-size 100000", "debris"),
    case("train", "--val-size 0.99", f"{TRAIN} --val-size 0.99", "--val-size 0.99", "held"),
    case("train", "--image-size the data does not have", f"{TRAIN} --image-size 32", "--image-size", "held"),
    case("train", "a folder of blank images", "--cpu --data-dir {ws}/blank-data --epochs 1 --batch-size 20 "
         "--output-dir {ws}/run", "blank", "silent"),
    case("train", "the same folder twice", f"{TRAIN} --data-dir {{ws}}/data {{ws}}/data", "twice", "unclear"),
    case("train", "a misspelt flag", f"{TRAIN} --epoch 3", "did you mean --epochs?", "held"),
    case("train", "weights in place of data", "--cpu --data-dir {ws}/weights.pth --output-dir {ws}/run",
         "weights.pth", "held"),
    case("train", "--output-dir is a file", f"{TRAIN.replace('{ws}/run', '{ws}/notes/thesis.docx')}",
         "is a file", "held"),
    # --- covid-ddp-predict ----------------------------------------------------------------------
    case("predict", "--output over the weights", f"{WEIGHTS} --output {{ws}}/weights.pth {{ws}}/images",
         "--output", "data loss"),
    case("predict", "--output over its own input", f"{WEIGHTS} --output {{ws}}/new.npz {{ws}}/new.npz",
         "--output", "data loss"),
    case("predict", "--output over a user's file", f"{WEIGHTS} --output {{ws}}/notes/thesis.docx {{ws}}/images",
         "--output", "data loss"),
    case("predict", "--gradcam into the input folder", f"{WEIGHTS} --gradcam {{ws}}/images {{ws}}/images",
         "--gradcam", "silent"),
    case("predict", "weights holding NaN", "--weights {ws}/nan.pth {ws}/images", "NaN or Inf", "silent"),
    case("predict", "an all-black picture", f"{WEIGHTS} {{ws}}/odd/black.png", "blank", "silent"),
    case("predict", "a 1x1 picture", f"{WEIGHTS} {{ws}}/odd/dot.png", "too small", "silent"),
    case("predict", "a sidecar threshold of true", "--weights {ws}/sidecars/true/COVID_binary_classifier.pth "
         "{ws}/images", "threshold", "silent"),
    case("predict", "a sidecar model that is a list", "--weights {ws}/sidecars/list/COVID_binary_classifier.pth "
         "{ws}/images", "model", "traceback"),
    case("predict", "a sidecar image size in words", "--weights {ws}/sidecars/big/COVID_binary_classifier.pth "
         "{ws}/images", "image_size", "traceback"),
    case("predict", "a sidecar naming an unknown network", "--weights {ws}/sidecars/unknown/"
         "COVID_binary_classifier.pth {ws}/images", "sidecar", "unclear"),
    case("predict", "old weights with a vector pixel_mean", "--weights {ws}/vector-mean.pth {ws}/images",
         "pixel_mean", "traceback"),
    case("predict", "--threshold nan", f"{WEIGHTS} --threshold nan {{ws}}/images", "--threshold", "held"),
    case("predict", "a pickle in place of weights", "--weights {ws}/pickled.pth {ws}/images", "pickled",
         "held"),
    case("predict", "a text file in place of weights", "--weights {ws}/notes/thesis.docx {ws}/images",
         "not a PyTorch weights file", "unclear"),
    case("predict", "an npz without images", f"{WEIGHTS} {{ws}}/odd/keys.npz", "no array named", "held"),
    case("predict", "a broken PNG", f"{WEIGHTS} {{ws}}/odd/broken.png", "not a readable image", "held"),
    # --- covid-ddp-evaluate ---------------------------------------------------------------------
    case("evaluate", "--output-dir is the data folder", f"{WEIGHTS} {SCORE} --output-dir {{ws}}/data",
         "--output-dir", "silent"),
    case("evaluate", "--output-dir holds a user's roc.png", f"{WEIGHTS} {SCORE} --output-dir {{ws}}/notes",
         "roc.png", "data loss"),
    case("evaluate", "--bootstrap 1e12", f"{WEIGHTS} {SCORE} --bootstrap 1000000000000 --output-dir {{ws}}/ev",
         "between 0 and 10000", "traceback"),
    case("evaluate", "weights holding NaN", f"--weights {{ws}}/nan.pth {SCORE} --output-dir {{ws}}/ev",
         "NaN or Inf", "traceback"),
    case("evaluate", "old weights with a vector pixel_mean", f"--weights {{ws}}/vector-mean.pth {SCORE} "
         "--output-dir {ws}/ev", "pixel_mean", "traceback"),
    case("evaluate", "--output-dir is a file", f"{WEIGHTS} {SCORE} --output-dir {{ws}}/notes/thesis.docx",
         "thesis.docx", "held"),
    # --- covid-ddp-audit ------------------------------------------------------------------------
    case("audit", "--output-dir is the data folder", f"{WEIGHTS} {SCORE} --output-dir {{ws}}/data",
         "--output-dir", "silent"),
    case("audit", "--output-dir holds a user's audit.md", f"{WEIGHTS} {SCORE} --output-dir {{ws}}/notes",
         "audit.md", "data loss"),
    case("audit", "--seed -1", f"{WEIGHTS} {SCORE} --seed -1 --output-dir {{ws}}/au", "--seed",
         "traceback"),
    case("audit", "weights holding NaN", f"--weights {{ws}}/nan.pth {SCORE} --output-dir {{ws}}/au",
         "NaN or Inf", "silent"),
    # --- covid-ddp-export -----------------------------------------------------------------------
    case("export", "--onnx over the weights", f"{WEIGHTS} --onnx {{ws}}/weights.pth", "--onnx", "held"),
    case("export", "--onnx over a user's file", f"{WEIGHTS} --onnx {{ws}}/notes/thesis.docx", "--onnx",
         "held"),
    case("export", "weights holding NaN", "--weights {ws}/nan.pth --onnx {ws}/model.onnx", "NaN or Inf", "silent"),
    # --- covid-ddp-prepare ----------------------------------------------------------------------
    case("prepare", "--overwrite of a user's folder", "--output-dir {ws}/notes --overwrite {ws}/classes",
         "--overwrite", "data loss"),
    case("prepare", "--output-dir inside its input", "--output-dir {ws}/classes/prepared {ws}/classes",
         "inside", "silent"),
    case("prepare", "--output-dir under a file", "--output-dir {ws}/notes/thesis.docx/sub {ws}/classes",
         "thesis.docx", "traceback"),
    case("prepare", "--image-size 100000", "--output-dir {ws}/prepared --image-size 100000 {ws}/classes",
         "between 8 and 1024", "hang"),
    case("prepare", "a CSV naming its path column twice", "--output-dir {ws}/prepared {ws}/csv/twice.csv",
         "path", "silent"),
    case("prepare", "a CSV whose columns clash in case", "--output-dir {ws}/prepared {ws}/csv/cases.csv",
         "label", "silent"),
    case("prepare", "a Latin-1 CSV", "--output-dir {ws}/prepared {ws}/csv/latin1.csv", "UTF-8", "traceback"),
    case("prepare", "a CSV path outside its folder", "--output-dir {ws}/prepared {ws}/csv/outside.csv",
         "--allow-outside", "silent"),
    case("prepare", "one file under two labels", "--output-dir {ws}/prepared {ws}/csv/conflict.csv",
         "label", "silent"),
    case("prepare", "a blank picture", "--output-dir {ws}/prepared {ws}/blank-classes", "blank", "silent"),
    case("prepare", "a FIFO named in a CSV", "--output-dir {ws}/prepared {ws}/csv/fifo.csv", "pipe.png", "hang",
         arrange=_fifo_in_a_csv),
    case("prepare", "a folder of no pictures", "--output-dir {ws}/prepared {ws}/notes", "notes", "held"),
    # --- covid-ddp-report -----------------------------------------------------------------------
    case("report", "--launcher that is not there", f"{DATA} --output-dir {{ws}}/rep --launcher nosuch", "nosuch",
         "traceback"),
    case("report", "--output-dir is a file", f"{DATA} --output-dir {{ws}}/notes/thesis.docx", "is a file",
         "traceback"),
    case("report", "--output-dir is the data folder", f"{DATA} --output-dir {{ws}}/data", "input", "debris"),
    case("report", "training flags that do not parse", f"{DATA} --output-dir {{ws}}/rep -- --epochs many",
         "--epochs", "debris"),
]


# --- the workspace ----------------------------------------------------------------------------------


def _picture(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _weights_with_sidecar(folder: Path, state: dict, sidecar: dict) -> None:
    folder.mkdir(parents=True)
    torch.save(state, folder / "COVID_binary_classifier.pth")
    (folder / "COVID_binary_classifier.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("workspace")
    rng = np.random.default_rng(7)
    images, labels = make_synthetic(120, seed=3)
    meta = {"dataset": np.array(["a", "b"] * 60)}
    write_mcfam(ws / "data", images, labels)
    np.savez(ws / "data" / "meta.npz", **meta)
    write_mcfam(ws / "blank-data", np.zeros_like(images), labels)
    np.savez(ws / "new.npz", train_images=images[:4])
    state = trained_like(OriginalNet(), seed=0).state_dict()
    torch.save(state, ws / "weights.pth")
    torch.save({**state, "fc2.weight": state["fc2.weight"] * float("nan")}, ws / "nan.pth")
    torch.save({**state, "pixel_mean": torch.zeros(3), "pixel_std": torch.ones(())}, ws / "vector-mean.pth")
    torch.save({"weights": state, "why": Path("a pickled class")}, ws / "pickled.pth")
    for name, sidecar in {"true": {"threshold": True}, "list": {"threshold": 0.5, "model": ["net", 64]},
                          "big": {"threshold": 0.5, "model": {"name": "net", "image_size": "big"}},
                          "unknown": {"threshold": 0.5, "model": {"name": "mystery", "image_size": 64}}}.items():
        _weights_with_sidecar(ws / "sidecars" / name, state, sidecar)
    for index in range(4):
        _picture(ws / "images" / f"x{index}.png", images[index])
    for label in ("covid", "normal"):
        for index in range(3):
            _picture(ws / "classes" / label / f"{index}.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    _picture(ws / "blank-classes" / "covid" / "black.png", np.zeros((64, 64), np.uint8))
    _picture(ws / "blank-classes" / "normal" / "ok.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    _picture(ws / "odd" / "black.png", np.zeros((256, 256), np.uint8))
    _picture(ws / "odd" / "dot.png", np.full((1, 1), 90, np.uint8))
    (ws / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    np.savez(ws / "odd" / "keys.npz", pictures=images[:2])
    (ws / "notes" / "sub").mkdir(parents=True)
    (ws / "notes" / "thesis.docx").write_text("four years of work")
    (ws / "notes" / "sub" / "notes.txt").write_text("the user's")
    (ws / "notes" / "audit.md").write_text("# my own audit")
    _picture(ws / "notes" / "roc.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    csv = ws / "csv"
    shutil.copytree(ws / "classes", csv / "pictures")
    (csv / "twice.csv").write_text("path,label,path\npictures/covid/0.png,covid,pictures/normal/0.png\n")
    (csv / "cases.csv").write_text("path,label,Label\npictures/covid/0.png,covid,normal\n")
    (csv / "latin1.csv").write_bytes("path,label\npictures/covid/0.png,é\n".encode("latin-1"))
    (csv / "outside.csv").write_text("path,label\n../classes/covid/0.png,covid\n")
    (csv / "conflict.csv").write_text("path,label\npictures/covid/0.png,covid\npictures/covid/0.png,normal\n"
                                      "pictures/normal/1.png,normal\n")
    return ws


def _snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: a file's bytes, or what kind of entry it is."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        entries[str(path.relative_to(folder))] = path.read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return entries


@pytest.fixture
def own_workspace(workspace, tmp_path) -> Path:
    return Path(shutil.copytree(workspace, tmp_path / "ws", symlinks=True))


# --- the cases ---------------------------------------------------------------------------------------


def _needs(command: str) -> None:
    if command == "export" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the export extra is not installed")


@pytest.mark.parametrize("bad", CASES, ids=[f"{c.command}: {c.name}" for c in CASES])
def test_a_bad_input_is_one_line_and_leaves_everything_as_it_was(own_workspace, capsys, monkeypatch, bad):
    _needs(bad.command)
    monkeypatch.chdir(own_workspace)  # a default output (runs/...) would land here and show as a change
    if bad.arrange:
        bad.arrange(own_workspace)
    before = _snapshot(own_workspace)
    code = COMMANDS[bad.command]([arg.format(ws=own_workspace) for arg in bad.argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "warning:" not in line and "note:" not in line]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"covid-ddp-{bad.command}: error:") and bad.says in lines[0], lines[0]
    assert _snapshot(own_workspace) == before, "the command changed the workspace"


def counts_table() -> str:
    """Cases per command and category, the markdown table docs/testing.md gives."""
    table = {command: {category: 0 for category in CATEGORIES} for command in COMMANDS}
    for bad in CASES:
        table[bad.command][bad.category] += 1
    lines = ["| command | " + " | ".join(CATEGORIES) + " | cases |", "| --- " * (len(CATEGORIES) + 2) + "|"]
    for command, by_category in table.items():
        lines.append(f"| {command} | " + " | ".join(str(n) for n in by_category.values())
                     + f" | {sum(by_category.values())} |")
    totals = [sum(1 for bad in CASES if bad.category == category) for category in CATEGORIES]
    lines.append("| all | " + " | ".join(map(str, totals)) + f" | {len(CASES)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python tests/test_bad_inputs.py: the table for docs/testing.md
    sys.stdout.write(counts_table())
