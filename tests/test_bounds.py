"""Numeric flags: one set of bounds for every command; NaN, infinities and out-of-range values are
one line naming the flag, and the upper bounds are said in --help."""

from __future__ import annotations

import json
import math

import pytest
import torch
from original_net import Net as OriginalNet
from original_net import trained_like

from covid_ddp.bounds import BOOTSTRAP, COUNT, FRACTION, IMAGE_SIZES, POSITIVE, POSITIVE_INT, PROBABILITY
from covid_ddp.commands.audit import main as audit_main
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.commands.predict import main as predict_main
from covid_ddp.commands.prepare import main as prepare_main
from covid_ddp.training.config import build_parser, parse_config


def test_every_bound_refuses_nan_infinities_and_booleans():
    for bounds in (POSITIVE, POSITIVE_INT, COUNT, FRACTION, PROBABILITY, BOOTSTRAP, IMAGE_SIZES):
        for value in (math.nan, math.inf, -math.inf, True):
            assert not bounds.holds(value), (bounds, value)
    assert POSITIVE.holds(1e-9) and not POSITIVE.holds(0)
    assert PROBABILITY.holds(0) and PROBABILITY.holds(1) and not FRACTION.holds(1)
    assert not POSITIVE_INT.holds(2.5) and IMAGE_SIZES.holds(1024) and not IMAGE_SIZES.holds(1025)


@pytest.mark.parametrize("flags, line", [
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--lr-factor", "nan"], "--lr-factor must be between 0 and 1 (exclusive), got nan"),
    (["--lr-patience", "-5"], "--lr-patience must be 0 or more, got -5"),
    (["--dist-timeout", "inf"], "--dist-timeout must be positive, got inf"),
    (["--max-grad-norm", "nan"], "--max-grad-norm must be positive, got nan"),
    (["--image-size", "100000"], "--image-size must be an integer between 8 and 1024, got 100000"),
    (["--bootstrap", "1000000000000"], "--bootstrap must be an integer between 0 and 10000"),
    (["--seed", "-1"], "--seed must be an integer between 0 and 4294967295, got -1"),
    (["--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
])
def test_training_flags_out_of_bounds_are_named(flags, line):
    from covid_ddp.errors import UserError

    with pytest.raises(UserError) as refused:
        parse_config(["--dataset", "synthetic", *flags])
    assert str(refused.value).startswith(line)


def test_the_upper_bounds_are_said_in_help():
    text = " ".join(build_parser().format_help().split())
    assert "(an integer between 8 and 1024)" in text and "(an integer between 0 and 10000)" in text


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("bounds") / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    return path


@pytest.mark.parametrize("command, argv, line", [
    (predict_main, ["--threshold", "nan", "x.npz"], "argument --threshold: must be a number between 0 and 1, got nan"),
    (predict_main, ["--batch-size", "0", "x.npz"], "argument --batch-size: must be positive, got 0"),
    (evaluate_main, ["--bootstrap", "1000000000000"], "argument --bootstrap: must be an integer between 0 and 10000"),
    (evaluate_main, ["--threshold", "1.5"], "argument --threshold: must be a number between 0 and 1, got 1.5"),
    (audit_main, ["--seed", "-1"], "argument --seed: must be an integer between 0 and 4294967295, got -1"),
    (predict_main, ["--batch-size", "many", "x.npz"], "argument --batch-size: must be positive, got 'many'"),
])
def test_other_commands_refuse_values_out_of_bounds_in_one_line(weights, capsys, command, argv, line):
    assert command(["--weights", str(weights), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, line", [
    (["--image-size", "100000"], "argument --image-size: must be an integer between 8 and 1024, got 100000"),
    (["--workers", "0"], "argument --workers: must be positive, got 0"),
])
def test_prepare_refuses_values_out_of_bounds_in_one_line(tmp_path, capsys, argv, line):
    assert prepare_main(["--output-dir", str(tmp_path / "out"), *argv, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err


@pytest.mark.parametrize("sidecar, fragment", [
    ({"threshold": True}, "'threshold' must be a number between 0 and 1, got True"),
    ({"threshold": "0.4"}, "'threshold' must be a number between 0 and 1, got '0.4'"),
    ({"threshold": 0.4, "model": ["net", 64]}, "'model' must be"),
    ({"threshold": 0.4, "model": {"name": "net", "image_size": "big"}}, "'model' must be"),
    ([0.4], "no 'threshold'"),
])
def test_a_hand_edited_sidecar_is_named_in_one_line(tmp_path, capsys, sidecar, fragment):
    weights = tmp_path / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), weights)
    (tmp_path / "COVID_binary_classifier.json").write_text(json.dumps(sidecar))
    assert predict_main(["--weights", str(weights), str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "COVID_binary_classifier.json" in err and fragment in err, err


def test_a_sidecar_naming_an_unknown_network_is_named_as_the_sidecars_fault(tmp_path, capsys):
    weights = tmp_path / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), weights)
    (tmp_path / "COVID_binary_classifier.json").write_text(json.dumps({"threshold": 0.4,
                                                                      "model": {"name": "resnet9000", "image_size": 64}}))
    assert predict_main(["--weights", str(weights), str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "COVID_binary_classifier.json: 'model' names 'resnet9000'" in err
    assert "--model" not in err, "predict has no --model flag to blame"
