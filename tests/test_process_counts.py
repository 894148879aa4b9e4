"""Any process count: the default command on the 8 GPUs a node holds (here CPU processes, one
thread each), and a resume on 3 that keeps its run's global batch or says which counts can."""

from __future__ import annotations

import json

import pytest
from conftest import TRAIN_SCRIPT, assert_failed_together, launch_job, torchrun, torchrun_launcher

from covid_ddp.training.config import TrainConfig
from covid_ddp.training.run_folder import recorded_batch_size

DEFAULT_COMMAND = ["--cpu", "--dataset", "synthetic", "--synthetic-size", "400", "--log-images-every", "0",
                   "--bootstrap", "0", "--audit", "no"]  # 252 training images: a small set's batch


def _snapshot(folder) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def eight_processes(tmp_path_factory):
    """One epoch of the default command on 8 CPU processes (one thread each)."""
    run_dir = tmp_path_factory.mktemp("default-8") / "run"
    result = torchrun(8, TRAIN_SCRIPT, [*DEFAULT_COMMAND, "--epochs", "1", "--output-dir", run_dir], timeout=240)
    return run_dir, result


def test_the_default_command_trains_on_eight_processes(eight_processes):
    """Nodes hold 4 to 8 GPUs: the default command, no batch flag, on 8 CPU processes trains
    with a global batch they share evenly, said in one line and recorded. (The recipe's 100 on
    any count, 99 on 3 and 96 on 8: tests/test_selection.py.)"""
    run_dir, result = eight_processes
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["distributed"]["num_processes"] == 8
    assert (recorded["config"]["batch_size"], recorded["config"]["eval_batch_size"]) == (16, 256)
    note = "note: 252 training images: batch size 16 instead of the recipe's 100, for 15 steps an epoch"
    assert result.stderr.count(note) == 1, result.stderr[-2000:]
    assert (run_dir / "COVID_binary_classifier.pth").is_file() and "Traceback" not in result.stderr


def test_a_resume_on_three_processes_keeps_the_runs_batch_or_names_the_counts_that_share_it(eight_processes, tmp_path):
    """The run trained on 8 processes with a global batch of 16: resumed on 3 processes it is
    refused in one line naming the counts that share 16; on 1, 2, 4 or 8 it would go on with 16."""
    run_dir, _ = eight_processes
    before = _snapshot(run_dir)
    resume = [*DEFAULT_COMMAND, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"]
    refused = launch_job(torchrun_launcher(3), TRAIN_SCRIPT, resume, tmp_path / "logs")
    assert_failed_together(refused, "the run to resume trained with a global batch of 16, which 3 processes cannot "
                                    "share evenly; resume it on 1, 2, 4, 8, 16 processes", ranks=3)
    assert _snapshot(run_dir) == before, "the failed start left the folder as it found it"
    assert recorded_batch_size(TrainConfig(output_dir=str(run_dir), resume="auto")) == 16, "what 1, 2, 4 or 8 go on with"
    assert recorded_batch_size(TrainConfig(output_dir=str(run_dir))) is None, "a new run settles its own"
