"""End to end through launch/train.py and launch/predict.py, as a user runs them."""

from __future__ import annotations

import csv
import importlib
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import PREDICT_SCRIPT, TRAIN_SCRIPT, clean_env, refused, run, small_args
from original_net import Net as OriginalNet
from original_net import trained_like
from PIL import Image
from sklearn.metrics import roc_auc_score

from covid_ddp import load_model, predict
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import split_indices
from covid_ddp.metrics import choose_threshold
from covid_ddp.training.config import build_parser


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("e2e") / "run"
    result = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, output_dir)])
    return output_dir, result


def test_training_writes_a_complete_run_folder(trained_run):
    output_dir, result = trained_run
    assert "Train Epoch: 2" in result.stdout and "Validation set: Average loss" in result.stdout
    assert result.stdout.count("Test set: Average loss") == 1, "the test split is touched once, at the end"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in ("loss", "accuracy", "sensitivity", "specificity", "roc_auc", "n", "confusion_matrix"):
        assert key in metrics["test"]
    assert len(metrics["history"]) == 2
    assert all(0 < epoch["seconds"] < 60 for epoch in metrics["history"]), "each epoch's seconds, for timing a run"
    config = json.loads((output_dir / "config.json").read_text())
    assert config["data"]["files"]["train_images64.npz"]["sha256"]
    assert config["distributed"]["num_processes"] == 1 and config["environment"]["packages"]["torch"]
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_cli_scores_npz_png_and_folders(trained_run, small_data, tmp_path):
    output_dir, _ = trained_run
    weights = output_dir / "COVID_binary_classifier.pth"
    images = load_data_dir(small_data).images[:5]
    np.savez(tmp_path / "five.npz", train_images=images)
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(np.kron(images[1], np.ones((2, 3), np.uint8))).save(folder / "b.png")  # 128x192: resized
    result = run([sys.executable, PREDICT_SCRIPT, "--weights", weights, "--device", "cpu", tmp_path / "five.npz", folder])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["five.npz"] * 5 + ["a.png", "b.png"]
    assert [r["index"] for r in rows[:5]] == ["0", "1", "2", "3", "4"]
    expected = predict(load_model(weights), images)  # the CLI's folded BatchNorm agrees to float round-off
    np.testing.assert_allclose([float(r["p_covid"]) for r in rows[:5]], expected, atol=1e-5)
    assert float(rows[5]["p_covid"]) == pytest.approx(expected[0], abs=1e-5), "a 64x64 PNG is used as is"
    threshold = json.loads((output_dir / "COVID_binary_classifier.json").read_text())["threshold"]
    assert f"threshold {threshold:.4f} (youden on the validation split, from COVID_binary_classifier.json)" in result.stderr
    assert all(r["prediction"] == ("COVID" if float(r["p_covid"]) >= threshold else "Non-COVID") for r in rows)
    assert "1 image was resized to 64x64, the weights' size (from 192x128; non-square ones center-cropped" in result.stderr

    out_file = tmp_path / "scores.csv"
    run([sys.executable, PREDICT_SCRIPT, "--weights", weights, "--threshold", "0", "--output", out_file, tmp_path / "five.npz"])
    assert {r["prediction"] for r in csv.DictReader(out_file.open())} == {"COVID"}


def test_the_weights_file_loads_into_the_original_scripts_class(trained_run, small_data):
    """The original reload snippet, with the original script's own Net, scores as covid-ddp-predict."""
    output_dir, _ = trained_run
    weights = output_dir / "COVID_binary_classifier.pth"
    model = OriginalNet()
    model.load_state_dict(torch.load(weights))
    model.eval()
    images = load_data_dir(small_data).images[:100]
    with torch.no_grad():
        original = model(torch.from_numpy(images).float().unsqueeze(1))[:, 1].exp().numpy()
    worst = np.abs(original - predict(load_model(weights), images)).max()
    print(f"max |P(COVID) difference|, original class vs covid-ddp: {worst:.3g}")  # shown with pytest -s
    assert worst < 1e-5


def test_finished_run_is_not_overwritten_without_overwrite(trained_run, small_data, tmp_path):
    output_dir, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(output_dir, copy)
    before = (copy / "COVID_binary_classifier.pth").read_bytes()
    result = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, copy)], check=False)
    assert result.returncode == 2 and "holds a finished run" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert (copy / "COVID_binary_classifier.pth").read_bytes() == before


@pytest.fixture(scope="module")
def one_epoch_run(small_data, tmp_path_factory):
    """The small recipe stopped after epoch 1 (one process): what the resume tests continue."""
    output_dir = tmp_path_factory.mktemp("one_epoch") / "run"
    run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, output_dir, "--epochs", "1")])
    return output_dir


def _copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def test_resume_after_epoch_one_ends_with_the_same_weights(trained_run, one_epoch_run, small_data, tmp_path):
    straight_dir, _ = trained_run  # the same recipe, never stopped
    resumed_dir = _copy(one_epoch_run, tmp_path)
    result = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, resumed_dir, "--resume", "latest")])
    assert "Resumed from" in result.stdout and "Train Epoch: 1 " not in result.stdout, "epoch 1 is skipped"
    straight = torch.load(straight_dir / "COVID_binary_classifier.pth", weights_only=True)
    resumed = torch.load(resumed_dir / "COVID_binary_classifier.pth", weights_only=True)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
    history = [json.loads((folder / "metrics.json").read_text())["history"] for folder in (straight_dir, resumed_dir)]
    assert [h["validation_loss"] for h in history[0]] == pytest.approx([h["validation_loss"] for h in history[1]], abs=1e-6)


def _assert_continued(run_dir, processes: int) -> dict:
    """The run went on from epoch 1 to its end, in the new layout."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["distributed"]["num_processes"] == processes
    state = torch.load(run_dir / "COVID_binary_classifier.pth", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state), "plain keys, whatever the layout"
    return recorded


def test_compile_can_be_switched_on_at_a_resume(one_epoch_run, small_data, tmp_path):
    """The eager dynamo backend (set as an accelerate config would) keeps this quick: what is
    checked is the compiled wrapper's checkpoint and weights keys, not inductor's kernels."""
    resumed_dir = _copy(one_epoch_run, tmp_path)
    run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, resumed_dir, "--resume", "latest", "--compile")],
        env=clean_env(ACCELERATE_DYNAMO_BACKEND="EAGER"))
    recorded = _assert_continued(resumed_dir, processes=1)
    assert recorded["config"]["compile"] and recorded["distributed"]["dynamo_backend"] == "EAGER"


def test_bf16_mixed_precision_trains_and_saves_fp32_weights(small_data, tmp_path):
    run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, tmp_path / "bf16", "--mixed-precision", "bf16", "--epochs", "1")])
    state = torch.load(tmp_path / "bf16" / "COVID_binary_classifier.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert np.isfinite(metrics["history"][0]["train_loss"])
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["distributed"]["mixed_precision"] == "bf16"

    # The threshold and the test metrics are those of the weights file (fp32), not of the bf16 model.
    data = load_data_dir(small_data)
    targets = to_binary(data.labels)
    split = split_indices(targets, 0.3, 0.1)
    shipped = load_model(tmp_path / "bf16" / "COVID_binary_classifier.pth")
    p_val, p_test = predict(shipped, data.images[split.val]), predict(shipped, data.images[split.test])
    sidecar = json.loads((tmp_path / "bf16" / "COVID_binary_classifier.json").read_text())
    assert sidecar["threshold"] == pytest.approx(choose_threshold(p_val, targets[split.val])["threshold"], abs=1e-6)
    test = metrics["test"]
    assert test["roc_auc"] == pytest.approx(roc_auc_score(targets[split.test], p_test), abs=1e-12)
    assert test["accuracy"] == pytest.approx(((p_test >= test["threshold"]) == targets[split.test]).mean(), abs=1e-12)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-5"], "--batch-size must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--test-size", "1.5"], "--test-size must be between 0 and 1"),
    (["--test-size", "0"], "--test-size must be between 0 and 1"),
    (["--val-size", "1.2"], "--val-size must be in [0, 1)"),
])
def test_bad_flags_get_one_line_and_exit_2(small_data, tmp_path, capsys, flags, message):
    from covid_ddp.commands.train import main as train_main

    code = train_main([str(a) for a in small_args(small_data, tmp_path / "run", *flags)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


COMMANDS = {"covid-ddp-train": "covid_ddp.commands.train", "covid-ddp-predict": "covid_ddp.commands.predict",
            "covid-ddp-evaluate": "covid_ddp.commands.evaluate", "covid-ddp-export": "covid_ddp.commands.export",
            "covid-ddp-prepare": "covid_ddp.commands.prepare", "covid-ddp-report": "covid_ddp.commands.report",
            "covid-ddp-audit": "covid_ddp.commands.audit"}


def run_main(prog: str, argv: list, capsys) -> tuple[int, str]:
    """A command's main() in this process: its exit code and stderr."""
    code = importlib.import_module(COMMANDS[prog]).main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("prog, argv, typo, meant", [
    ("covid-ddp-train", ["--epoch", "3"], "--epoch", "--epochs"),  # was taken as --epochs 3
    ("covid-ddp-train", ["--lr=0.1", "--bach-size", "4"], "--bach-size", "--batch-size"),
    ("covid-ddp-predict", ["--weight", "w.pth", "x.png"], "--weight", "--weights"),  # not "--weights is required"
    ("covid-ddp-evaluate", ["--weights", "w.pth", "--split=al", "--boot", "0"], "--boot", "--bootstrap"),  # first
    ("covid-ddp-export", ["--weights", "w.pth", "--onn", "m.onnx"], "--onn", "--onnx"),
    ("covid-ddp-prepare", ["--output", "out", "src"], "--output", "--output-dir"),
    ("covid-ddp-report", ["--data-dir", "d", "--output-dir", "o", "--seed", "1", "--", "--epochs", "1"],
     "--seed", "--seeds"),
])
def test_a_mistyped_or_abbreviated_flag_is_one_line_naming_the_flag_meant(capsys, prog, argv, typo, meant):
    code, err = run_main(prog, argv, capsys)
    assert code == 2
    assert err == f"{prog}: error: unrecognized argument {typo}; did you mean {meant}? (see {prog} --help)\n"


@pytest.mark.parametrize("prog, argv, message", [
    ("covid-ddp-train", ["--zzz"], "unrecognized argument --zzz"),
    ("covid-ddp-train", ["--epochs", "3", "5"], "unrecognized argument 5"),
    ("covid-ddp-predict", ["--weights", "w.pth", "--device", "gpu", "x.png"], "argument --device: invalid choice: 'gpu'"),
    ("covid-ddp-evaluate", [], "the following arguments are required: --weights"),
    ("covid-ddp-train", ["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
])
def test_other_flag_errors_are_one_line_without_the_usage(capsys, prog, argv, message):
    code, err = run_main(prog, argv, capsys)
    assert code == 2 and "usage:" not in err and err.count("\n") == 1
    assert err.startswith(f"{prog}: error: {message}") and err.endswith(f" (see {prog} --help)\n")


def test_a_flag_error_is_printed_by_the_main_process_only(capsys, monkeypatch):
    """Every rank parses the same command line: one copy of the line, not one per process."""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert run_main("covid-ddp-train", ["--epoch", "3"], capsys) == (2, "")
    monkeypatch.setenv("RANK", "0")
    code, err = run_main("covid-ddp-train", ["--epoch", "3"], capsys)
    assert code == 2 and err.count("\n") == 1 and "did you mean --epochs?" in err


@pytest.fixture
def weights(tmp_path):
    """Weights as the original script writes them, in a run folder."""
    path = tmp_path / "run" / "COVID_binary_classifier.pth"
    path.parent.mkdir()
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    return path


@pytest.mark.parametrize("prog, argv", [
    ("covid-ddp-train", ["--data-dir", "{missing}", "--output-dir", "{tmp}/out"]),
    ("covid-ddp-predict", ["--weights", "{missing}", "{tmp}/x.png"]),
    ("covid-ddp-predict", ["--weights", "{weights}", "{tmp}/x.png", "{missing}"]),
    ("covid-ddp-evaluate", ["--weights", "{missing}", "--data-dir", "{tmp}"]),
    ("covid-ddp-evaluate", ["--weights", "{weights}", "--data-dir", "{missing}", "--split", "all"]),
    ("covid-ddp-export", ["--weights", "{missing}", "--onnx", "{tmp}/m.onnx"]),
    ("covid-ddp-prepare", ["--output-dir", "{tmp}/out", "{missing}"]),
    ("covid-ddp-report", ["--data-dir", "{missing}", "--output-dir", "{tmp}/out"]),
    ("covid-ddp-audit", ["--weights", "{missing}", "--data-dir", "{tmp}", "--output-dir", "{tmp}/out"]),
    ("covid-ddp-audit", ["--weights", "{weights}", "--data-dir", "{missing}", "--split", "all",
                         "--output-dir", "{tmp}/out"]),
    ("covid-ddp-evaluate", ["--weights", "{weights}", "--weights", "{missing}", "--data-dir", "{tmp}"]),
])
def test_a_missing_path_does_not_exist_in_every_command(capsys, weights, tmp_path, prog, argv):
    missing = tmp_path / "missing"
    code, err = run_main(prog, [a.format(missing=missing, tmp=tmp_path, weights=weights) for a in argv], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: {missing} does not exist"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prog, argv", [
    ("covid-ddp-predict", ["{tmp}/x.png"]),
    ("covid-ddp-evaluate", ["--data-dir", "{tmp}", "--split", "all"]),
    ("covid-ddp-export", ["--onnx", "{tmp}/m.onnx"]),
])
def test_a_folder_given_as_weights_names_the_weights_file_inside_it(capsys, weights, tmp_path, prog, argv):
    rest = [a.format(tmp=tmp_path) for a in argv]
    code, err = run_main(prog, ["--weights", weights.parent, *rest], capsys)
    assert code == 2
    assert err == (f"{prog}: error: {weights.parent} is a folder, not a weights file; pass the .pth inside it, "
                   f"e.g. {weights}\n")
    weights.unlink()  # a folder without one: no file to suggest
    code, err = run_main(prog, ["--weights", weights.parent, *rest], capsys)
    assert err == f"{prog}: error: {weights.parent} is a folder, not a weights file; pass the .pth inside it\n"


def test_every_flag_has_help_text():
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_help_says_each_default_once_and_keeps_urls_and_flags_whole(monkeypatch):
    from covid_ddp.commands.evaluate import build_parser as evaluate_parser
    from covid_ddp.commands.export import build_parser as export_parser
    from covid_ddp.commands.predict import build_parser as predict_parser
    from covid_ddp.commands.prepare import build_parser as prepare_parser
    from covid_ddp.commands.report import build_parser as report_parser

    monkeypatch.setenv("COLUMNS", "80")
    for parser in (build_parser(), predict_parser(), evaluate_parser(), export_parser(), prepare_parser(),
                   report_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, parser.prog
        for option in text.split("\n  -")[1:]:
            assert option.count("(default:") <= 1, option
        assert "default: ~" not in text or "(default: ~/.cache/covid_ddp/mcfam)" in " ".join(text.split())
    train_help = " ".join(build_parser().format_help().split())
    assert "http://www-users.math.umn.edu/~jwcalder/MCFAM/" in train_help, "the URL is not broken across lines"
    assert "(default: 300)" in train_help and "300.0" not in train_help
    assert "--output-dir" in train_help and "--output- dir" not in train_help


def test_accelerate_config_is_a_valid_multi_gpu_config_that_leaves_the_precision_to_covid_ddp():
    from accelerate.commands.config.config_args import load_config_from_file
    from conftest import ROOT

    config = load_config_from_file(str(ROOT / "accelerate_config.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "no", "no: auto's choice"
    assert config.num_machines == 1 and config.num_processes >= 2


def test_the_run_ships_its_weights_as_safetensors_too_and_every_command_reads_either(trained_run, small_data,
                                                                                      tmp_path, capsys):
    """The .pth stays (the original script's users load it); beside it the same tensors as
    .safetensors, the network in its header, read by predict, evaluate, audit and --init-weights."""
    from safetensors.torch import load_file

    from covid_ddp.commands.audit import main as audit_main
    from covid_ddp.commands.evaluate import main as evaluate_main
    from covid_ddp.files import safetensors_metadata

    output_dir, _ = trained_run
    pth, safe = output_dir / "COVID_binary_classifier.pth", output_dir / "COVID_binary_classifier.safetensors"
    original, copy = torch.load(pth, weights_only=True), load_file(str(safe))
    assert original.keys() == copy.keys() and all(torch.equal(original[key], copy[key]) for key in original)
    assert json.loads(safetensors_metadata(safe)["covid_ddp_model"]) == {"name": "net", "image_size": 64}
    images = load_data_dir(small_data).images[:8]
    alone = tmp_path / "alone" / "weights.safetensors"  # without its sidecar: the header names the network
    alone.parent.mkdir()
    shutil.copy(safe, alone)
    for weights in (safe, alone):
        np.testing.assert_array_equal(predict(load_model(weights), images), predict(load_model(pth), images))
    assert evaluate_main(["--weights", str(safe), "--bootstrap", "0", "--output-dir", str(tmp_path / "eval")]) == 0
    scored = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]
    assert scored["confusion_matrix"] == json.loads((output_dir / "metrics.json").read_text())["test"]["confusion_matrix"]
    assert audit_main(["--weights", str(safe), "--split", "val", "--output-dir", str(tmp_path / "audit")]) == 0
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code = evaluate_main(["--weights", str(tmp_path / "broken.safetensors"), "--split", "all", "--data-dir",
                          str(small_data), "--output-dir", str(tmp_path / "eval2")])
    refused(capsys, code, "broken.safetensors: not a loadable weights file (safetensors: ")
    # (--init-weights, which starts only backbones, reads it too: tests/test_backbones.py)


@pytest.fixture
def terminal_ctrl_c():
    """Ctrl-C handled as in a terminal's foreground job (a pytest-xdist worker ignores it)."""
    import signal

    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.signal(signal.SIGINT, ignored)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the swallowed Ctrl-C itself)
def test_a_ctrl_c_that_a_finalizer_swallowed_still_stops_the_write(tmp_path, terminal_ctrl_c):
    """Python drops an error raised while a ``__del__`` runs ("Exception ignored in"), so a Ctrl-C
    landing there would let the command go on: its final rename refuses instead."""
    import gc
    import os
    import signal

    from covid_ddp.cli import run_cli
    from covid_ddp.files import write_json

    class CtrlCWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the finalizer
            sum(range(1000))

    def command():
        CtrlCWhileFinalised()
        gc.collect()
        write_json(tmp_path / "out.json", {"written": True})

    assert run_cli(command, "covid-ddp-test") == 128 + signal.SIGINT
    assert sorted(os.listdir(tmp_path)) == [], "nothing written, no temporary file left"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"
