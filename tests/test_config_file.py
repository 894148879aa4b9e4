"""covid-ddp-train --config FILE: settings from YAML or JSON (a run's own config.json included),
under the command line's flags, each value checked as its flag would be."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import TRAIN_SCRIPT, refused, run

from covid_ddp.commands.train import main as train_main
from covid_ddp.errors import UserError
from covid_ddp.training.config import parse_config


def write(path, text: str):
    path.write_text(text)
    return path


def test_a_yaml_file_sets_flags_and_the_command_line_wins(tmp_path):
    recipe = write(tmp_path / "recipe.yaml", "epochs: 3\nbatch-size: 50\nlr: 0.0005\naugment: true\n"
                                             "data_dir: [a, b]\nmixed_precision: bf16\nmax_grad_norm: null\n")
    config = parse_config(["--config", str(recipe), "--epochs", "7", "--no-augment"])
    assert (config.epochs, config.batch_size, config.lr, config.augment) == (7, 50, 0.0005, False)
    assert config.data_dir == ["a", "b"] and config.mixed_precision == "bf16" and config.max_grad_norm is None
    assert parse_config(["--epochs", "7", "--config", str(recipe)]).epochs == 7, "wherever --config stands"
    assert parse_config([f"--config={recipe}"]).augment is True


def test_a_json_file_reads_like_the_yaml_one(tmp_path):
    recipe = write(tmp_path / "recipe.json", json.dumps({"epochs": 2, "select_by": "auc", "group_split": True}))
    config = parse_config(["--config", str(recipe)])
    assert (config.epochs, config.select_by, config.group_split) == (2, "auc", True)


@pytest.mark.parametrize("name, text, says", [
    ("typo.yaml", "batch_sise: 64\n", "unknown key 'batch_sise'; did you mean 'batch_size'?"),
    ("words.yaml", "epochs: ten\n", "argument --epochs: invalid int value: 'ten'"),
    ("nan.yaml", "lr: .nan\n", "lr must be"),
    ("negative.json", '{"lr_patience": -5}', "lr_patience must be"),
    ("choice.yaml", "select_by: accuracy\n", "argument --select-by: invalid choice: 'accuracy'"),
    ("flag.yaml", "augment: 1\n", "'augment' is true or false, got 1"),
    ("list.yaml", "epochs: [1, 2]\n", "'epochs' takes one value"),
    ("broken.yaml", "epochs: 3\n  lr: [\n", "not valid YAML at line"),
    ("broken.json", '{"epochs": 3,}', "not valid JSON"),
    ("scalar.yaml", "just words\n", "holds str, not settings"),
    ("recipe.toml", "epochs = 3\n", "give a .json, .yaml or .yml file"),
])
def test_a_bad_settings_file_is_one_line_naming_it(tmp_path, name, text, says):
    path = write(tmp_path / name, text)
    with pytest.raises(UserError) as raised:
        parse_config(["--config", str(path)])
    message = str(raised.value)
    assert message.startswith(f"--config {path}") and says in message and "\n" not in message, message


def test_a_missing_settings_file_is_refused_by_the_command_in_one_line(tmp_path, capsys):
    refused(capsys, train_main(["--config", str(tmp_path / "nope.yaml")]), "--config", "nope.yaml: no such file")


def test_a_run_given_back_its_config_json_trains_the_same_weights(small_data, tmp_path):
    """Where the run was (its folder, resume, overwrite) is not given back: the second run goes to
    the folder the command line names, and its weights are the first's, bit for bit. Both run as
    a user runs them, as commands (one thread each, as every bit-identity test here: in the floor
    environment two in-process runs beside other tests once differed)."""
    first, second = tmp_path / "first", tmp_path / "second"
    run([sys.executable, TRAIN_SCRIPT, "--data-dir", small_data, "--output-dir", first, "--epochs", "2",
         "--batch-size", "40", "--augment", "--bootstrap", "0", "--log-images-every", "0", "--audit", "no"])
    assert parse_config(["--config", str(first / "config.json")]).output_dir is None, "a new folder, not the first's"
    run([sys.executable, TRAIN_SCRIPT, "--config", first / "config.json", "--output-dir", second])
    recorded = [json.loads((folder / "config.json").read_text())["config"] for folder in (first, second)]
    assert {k: v for k, v in recorded[1].items() if k != "output_dir"} == \
        {k: v for k, v in recorded[0].items() if k != "output_dir"}
    weights = [torch.load(folder / "COVID_binary_classifier.pth", weights_only=True) for folder in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
