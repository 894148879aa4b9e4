"""Resuming a run folder: what a checkpoint may hold, and the flags a resume may change.

One finished 1-process run (2 epochs) is copied, as a run stopped after epoch 1, for each test.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import small_args

from covid_ddp.commands.train import main as train_main
from covid_ddp.training.checkpoint import LOOP_STATE, OPTIMIZER_STATE


@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert train_main([str(a) for a in small_args(small_data, run_dir)]) == 0
    return run_dir


@pytest.fixture
def stopped_run(finished_run, tmp_path):
    """The finished run as it stood after epoch 1: its first checkpoint, no outputs."""
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints" / "epoch_002")
    for name in ("COVID_binary_classifier.pth", "COVID_binary_classifier.json", "metrics.json"):
        (run_dir / name).unlink()
    return run_dir


def resume(capsys, data, run_dir, *extra) -> tuple[int, str, str]:
    code = train_main([str(a) for a in small_args(data, run_dir, "--resume", "latest", *extra)])
    out, err = capsys.readouterr()
    return code, out, err


class _Payload:
    """Unpickled, it creates ``marker``: what a planted pickle could do, harmlessly."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_resume_reads_no_pickle_in_the_checkpoint(capsys, small_data, stopped_run, tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoint = stopped_run / "checkpoints" / "epoch_001"
    # accelerate's pickled state files (what covid_ddp checkpoints held before): never opened.
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"):
        torch.save(_Payload(marker), checkpoint / name)
    code, out, _ = resume(capsys, small_data, stopped_run)
    assert code == 0 and "Resumed from" in out
    assert not marker.exists(), "a pickle in the checkpoint ran"


def test_a_pickle_in_place_of_a_state_file_is_refused_in_one_line(capsys, small_data, stopped_run, tmp_path):
    marker = tmp_path / "payload_ran"
    optimizer_state = stopped_run / "checkpoints" / "epoch_001" / OPTIMIZER_STATE
    torch.save({"optimizer": _Payload(marker), "scaler": None}, optimizer_state)
    code, _, err = resume(capsys, small_data, stopped_run)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{optimizer_state}: refused" in err and "pickled Python objects" in err
    assert not marker.exists(), "the pickle ran"


def test_a_checkpoint_in_accelerates_pickled_format_is_refused_in_one_line(capsys, small_data, stopped_run):
    checkpoint = stopped_run / "checkpoints" / "epoch_001"
    (checkpoint / LOOP_STATE).unlink()
    torch.save({"epoch": 1}, checkpoint / "custom_checkpoint_0.pkl")
    code, _, err = resume(capsys, small_data, stopped_run)
    assert code == 2 and err.count("\n") == 1, err
    assert "written by covid_ddp 0.1" in err and "not resumed" in err


# --- the flags of a resume ----------------------------------------------------------------------


def test_a_resume_with_flags_that_change_the_result_is_refused_in_one_line(capsys, small_data, stopped_run):
    recorded = (stopped_run / "config.json").read_text()
    code, _, err = resume(capsys, small_data, stopped_run, "--lr", "0.0005", "--batch-size", "20")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--batch-size 20 (the run's: 40)" in err and "--lr 0.0005 (the run's: 0.001)" in err
    assert "--resume-with-changes" in err
    assert (stopped_run / "config.json").read_text() == recorded, "nothing rewritten"
    assert not (stopped_run / "metrics.json").exists()


def test_a_finished_run_is_checked_like_an_unfinished_one(capsys, small_data, finished_run):
    """--resume auto on a finished run (what a restart or a requeue does): the same flags find
    nothing to do; other flags are refused in one line, as on an unfinished run, not passed off as it."""
    recorded = (finished_run / "config.json").read_text()
    for extra in (["--lr", "0.5"], ["--resume-with-changes", "--lr", "0.5"]):
        code = train_main([str(a) for a in small_args(small_data, finished_run, "--resume", "auto", *extra)])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and "--lr 0.5" in err and "nothing to do" not in out, err
    assert (finished_run / "config.json").read_text() == recorded, "nothing rewritten"
    assert train_main([str(a) for a in small_args(small_data, finished_run, "--resume", "auto")]) == 0
    assert "is finished (--epochs 2 reached): nothing to do" in capsys.readouterr().out


def test_other_data_files_are_refused_at_a_resume(capsys, small_data, stopped_run, tmp_path):
    other = shutil.copytree(small_data, tmp_path / "data")
    images = np.load(other / "train_images64.npz")["train_images"]
    images[0, 0, 0] ^= 1
    np.savez(other / "train_images64.npz", train_images=images)
    code, _, err = resume(capsys, other, stopped_run)
    assert code == 2 and "other data files (their sha256 differ)" in err, err


def test_a_run_on_a_folder_of_yours_records_it_and_never_mcfam(finished_run, small_data):
    recorded = json.loads((finished_run / "config.json").read_text())
    data = recorded["data"]
    assert data["source"] == "folders" and data["data_dir"] == str(small_data.resolve())
    assert (data["images"], data["covid"] + data["non_covid"]) == (400, 400)
    assert len(data["files"]["train_images64.npz"]["sha256"]) == 64
    assert "mcfam" not in json.dumps(data).lower() and "mcfam_url" not in recorded["config"]
    assert "umn.edu" not in json.dumps(recorded), "never MCFAM's address"


def test_a_prepared_folder_records_what_prepare_wrote(tmp_path):
    from covid_ddp.data.folders import load_data_dir

    folder = tmp_path / "prepared"
    folder.mkdir()
    np.savez(folder / "train_images64.npz", train_images=np.zeros((4, 64, 64), np.uint8))
    np.savez(folder / "train_labels.npz", train_labels=np.eye(4, dtype=np.float32))
    (folder / "prepare.json").write_text(json.dumps({"images": 4, "skipped": [{"path": "x.png", "error": "e"}],
                                                     "per_class": {"0": 1, "1": 1, "2": 1, "3": 1}}))
    prepare = load_data_dir(folder).provenance["prepare"]
    assert prepare["images"] == 4 and prepare["skipped"] == 1 and prepare["per_class"]["2"] == 1
    assert len(prepare["sha256"]) == 64


def test_flags_that_do_not_change_the_result_may_change(capsys, small_data, stopped_run):
    code, out, err = resume(capsys, small_data, stopped_run, "--epochs", "3", "--log-every", "3",
                            "--eval-batch-size", "30", "--data-on-device", "no", "--bootstrap", "10")
    assert code == 0, err
    history = json.loads((stopped_run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((stopped_run / "config.json").read_text())["resumes"] == [{"from": "epoch_001", "changed": {}}]


def test_resume_with_changes_applies_a_new_schedule_and_records_it(capsys, small_data, stopped_run):
    code, out, err = resume(capsys, small_data, stopped_run, "--lr", "0.0005", "--lr-factor", "0.5",
                            "--resume-with-changes")
    assert code == 0, err
    assert "--lr 0.0005 applied to the optimizer (it was at 0.001 in the checkpoint)" in out
    history = json.loads((stopped_run / "metrics.json").read_text())["history"]
    assert history[0]["lr"] == 0.001 and history[1]["lr"] == 0.0005, "epoch 2 trained with the new rate"
    saved = json.loads((stopped_run / "checkpoints" / "epoch_002" / LOOP_STATE).read_text())
    assert saved["scheduler"]["factor"] == 0.5, "the schedule's saved state did not bring the old factor back"
    config = json.loads((stopped_run / "config.json").read_text())
    assert config["config"]["lr"] == 0.0005
    assert config["resumes"] == [{"from": "epoch_001", "changed": {"--lr": [0.001, 0.0005],
                                                                   "--lr-factor": [0.6, 0.5]}}]


def test_a_resume_cannot_swap_the_optimizer_schedule_or_weight_average(capsys, small_data, stopped_run):
    """Their saved states belong to the run's parts (Adam's moments, the plateau's count): refused
    in one line, before any is loaded, and nothing recorded."""
    recorded = (stopped_run / "config.json").read_text()
    code, _, err = resume(capsys, small_data, stopped_run, "--optimizer", "adamw", "--ema", "0.9",
                          "--resume-with-changes")
    assert code == 2 and err.count("\n") == 1, err
    assert "--optimizer, --ema cannot change at a resume" in err and "--optimizer adam and --ema None" in err
    assert (stopped_run / "config.json").read_text() == recorded


def test_the_batch_size_cannot_change_inside_an_epoch(capsys, small_data, stopped_run):
    checkpoints = stopped_run / "checkpoints"
    (checkpoints / "epoch_001").rename(checkpoints / "epoch_002_step_00003")  # as if stopped at step 3 of epoch 2
    code, _, err = resume(capsys, small_data, stopped_run, "--batch-size", "20", "--resume-with-changes")
    assert code == 2 and err.count("\n") == 1, err
    assert "--batch-size cannot change inside an epoch" in err and "epoch_NNN" in err


def test_a_damaged_training_state_is_refused_in_one_line(capsys, small_data, stopped_run):
    state = stopped_run / "checkpoints" / "epoch_001" / LOOP_STATE
    state.write_text('{"progress": ')
    recorded = (stopped_run / "config.json").read_text()
    code, _, err = resume(capsys, small_data, stopped_run, "--lr", "0.0005", "--resume-with-changes")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{state}: not a covid_ddp training state (JSONDecodeError" in err
    assert (stopped_run / "config.json").read_text() == recorded, "a resume that failed records nothing"


def test_a_damaged_state_file_is_called_damaged_not_dangerous(capsys, small_data, stopped_run):
    optimizer_state = stopped_run / "checkpoints" / "epoch_001" / OPTIMIZER_STATE
    with zipfile.ZipFile(optimizer_state) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries[next(name for name in entries if name.endswith("data.pkl"))] = b"\x80\x02garbage"
    with zipfile.ZipFile(optimizer_state, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    code, _, err = resume(capsys, small_data, stopped_run)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{optimizer_state}: not a loadable checkpoint file (damaged:" in err and "pickled" not in err


def test_a_requeue_onto_other_hardware_keeps_the_runs_precision_or_says_what_changed(capsys, small_data, stopped_run,
                                                                                      tmp_path):
    """Precision auto is decided per machine, yet it is a result flag: a resume adopts the run's own
    where this hardware runs it, else goes on in auto's choice, says so and records the change."""
    config_path = stopped_run / "config.json"
    recorded = json.loads(config_path.read_text())
    gpu_run = shutil.copytree(stopped_run, tmp_path / "gpu_run")
    other = "bf16" if recorded["config"]["mixed_precision"] == "no" else "no"  # both run on any CPU
    for run_dir, precision in ((stopped_run, other), (gpu_run, "fp16")):  # fp16: trained on GPUs, requeued on a CPU
        (run_dir / "config.json").write_text(json.dumps({**recorded, "config": {**recorded["config"],
                                                                                "mixed_precision": precision}}))
    explicit = "no" if other == "bf16" else "bf16"
    code, _, err = resume(capsys, small_data, stopped_run, "--mixed-precision", explicit)
    assert code == 2 and f"the precision {explicit} (the run's: {other}" in err, "a flag given is still checked"
    code, out, err = resume(capsys, small_data, stopped_run)
    assert code == 0 and "note: --mixed-precision auto" not in err, err
    written = json.loads(config_path.read_text())
    assert written["config"]["mixed_precision"] == written["distributed"]["mixed_precision"] == other
    assert written["resumes"] == [{"from": "epoch_001", "changed": {}}]
    code, out, err = resume(capsys, small_data, gpu_run)
    assert code == 0, err
    written = json.loads((gpu_run / "config.json").read_text())
    best = written["config"]["mixed_precision"]
    assert best in ("no", "bf16") and written["resumes"] == [{"from": "epoch_001",
                                                              "changed": {"--mixed-precision": ["fp16", best]}}]
    (note,) = [line for line in err.splitlines() if "note: --mixed-precision auto" in line]
    assert "the resumed run trained in fp16, which process 0 (on " in note and "(CPU) cannot run" in note
