"""Any process count: the default command on the 3 to 8 GPUs a node holds (here CPU processes,
one thread each), and a resume that keeps its run's global batch on another count."""

from __future__ import annotations

import json

import pytest
from conftest import TRAIN_SCRIPT, assert_failed_together, launch_job, torchrun, torchrun_launcher

from covid_ddp.training.config import TrainConfig
from covid_ddp.training.run_folder import recorded_batch_size

DEFAULT_COMMAND = ["--cpu", "--dataset", "synthetic", "--log-images-every", "0", "--bootstrap", "0", "--audit", "no"]
SIZES = {3: "1600", 8: "400"}  # 1,008 training images: 10 steps of the recipe's batch; 252: a small set's


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    """One epoch of the default command on N CPU processes (one thread each), run once per N."""
    runs = {}

    def trained_on(processes: int):
        if processes not in runs:
            run_dir = tmp_path_factory.mktemp(f"default-{processes}") / "run"
            result = torchrun(processes, TRAIN_SCRIPT, [*DEFAULT_COMMAND, "--synthetic-size", SIZES[processes],
                                                        "--epochs", "1", "--output-dir", run_dir], timeout=240)
            runs[processes] = run_dir, result
        return runs[processes]

    return trained_on


@pytest.mark.parametrize("processes, batch, note", [
    (3, 99, "note: batch size 99 instead of the recipe's 100, a global batch the 3 processes share evenly (33 each)"),
    (8, 16, "note: 252 training images: batch size 16 instead of the recipe's 100, for 15 steps an epoch")])
def test_the_default_command_trains_on_any_process_count(default_runs, processes, batch, note):
    """Nodes hold 3 to 8 GPUs: the default command, no batch flag, on 3 and 8 CPU processes
    trains with a global batch they share evenly (the recipe's, or a small set's), said in one
    line and recorded."""
    run_dir, result = default_runs(processes)
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["distributed"]["num_processes"] == processes
    assert (recorded["config"]["batch_size"], recorded["config"]["eval_batch_size"]) == (batch, 100 * processes)
    assert result.stderr.count(note) == 1, result.stderr[-2000:]
    assert (run_dir / "COVID_binary_classifier.pth").is_file() and "Traceback" not in result.stderr


def test_a_resume_goes_on_with_the_batch_its_run_trained_with_or_says_which_process_counts_can(default_runs, tmp_path):
    """The run trained on 3 processes with a global batch of 99: resumed on 2 it is refused in one
    line naming the counts that share 99; on 1 or 3 it goes on with 99 (not 1 process's 100)."""
    run_dir, _ = default_runs(3)
    resume = [*DEFAULT_COMMAND, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"]
    refused = launch_job(torchrun_launcher(2), TRAIN_SCRIPT, resume, tmp_path / "logs")
    assert_failed_together(refused, "the run to resume trained with a global batch of 99, which 2 processes cannot "
                                    "share evenly; resume it on 1, 3, 9, 11, 33 processes")
    assert recorded_batch_size(TrainConfig(output_dir=str(run_dir), resume="auto")) == 99, "what 1 or 3 go on with"
    assert recorded_batch_size(TrainConfig(output_dir=str(run_dir))) is None, "a new run settles its own"
