"""Resuming a run folder: what a checkpoint may hold, and the flags a resume may change.

One finished 1-process run (2 epochs) is copied, as a run stopped after epoch 1, for each test.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

from conftest import small_args
from covid_ddp.checkpoint import LOOP_STATE, OPTIMIZER_STATE
from covid_ddp.train import main as train_main


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
    assert "written by an earlier covid_ddp" in err and "not resumed" in err
