"""Every launcher, on this GPU-less machine, without --cpu; and failures that end the whole job.

Each failure case is a real 2-process job: it must end on every process within seconds
(not after --dist-timeout), with exactly one ``covid-ddp-train: error:`` line, printed by
the main process, and no traceback from any rank (the launcher's own summary aside).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    HELPERS,
    ROOT,
    TRAIN_SCRIPT,
    assert_failed_together,
    clean_env,
    launch_job,
    run,
    small_args,
    torchrun_launcher,
    write_mcfam,
)

from covid_ddp.errors import UserError
from covid_ddp.training import distributed
from covid_ddp.training.checkpoint import complete_checkpoints
from covid_ddp.training.hardware import cpu_has_native_bf16

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
CONFIG = ROOT / "accelerate_config.yaml"


def _distributed(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())["distributed"]


# --- the CPU fallback -----------------------------------------------------------------------


def test_the_shipped_accelerate_config_trains_on_cpu_processes_without_flags(small_data, tmp_path):
    """A multi-GPU bf16 config on a machine without GPUs: 2 CPU processes in one gloo group."""
    result = run([*ACCELERATE, "--config_file", CONFIG, TRAIN_SCRIPT,
                  *small_args(small_data, tmp_path / "run", "--epochs", "1")])
    recorded = _distributed(tmp_path / "run")
    assert recorded["num_processes"] == 2 and recorded["distributed_type"].endswith("MULTI_CPU")
    assert recorded["mixed_precision"] == ("bf16" if cpu_has_native_bf16() else "no"), "the best precision here"
    assert "covid-ddp-train: 2 CPU processes (gloo)" in result.stdout
    said = "note: accelerate launch passed mixed_precision 'no', which covid_ddp reads as 'choose'"
    assert result.stderr.count(said) == (recorded["mixed_precision"] != "no"), "the launcher's 'no' and ours, explained"
    assert result.stdout.count("Test set: Average loss") == 1


def test_accelerate_multi_gpu_flags_without_gpus_form_a_cpu_group_that_agrees_on_one_precision(small_data, tmp_path):
    """accelerate's own --multi_gpu on a machine without GPUs: a 2-process CPU group. Rank 1's
    machine computes bf16 only emulated (fake_hardware): auto trains both in fp32, and says so once."""
    result = run([*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", HELPERS / "fake_hardware.py", "0:native=bf16;1:native=no",
                  *small_args(small_data, tmp_path / "run", "--epochs", "1")], env=clean_env(CUDA_VISIBLE_DEVICES=""))
    recorded = _distributed(tmp_path / "run")
    assert recorded["num_processes"] == 2 and recorded["mixed_precision"] == "no"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["mixed_precision"] == "no"
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["COVID_binary_classifier.pth"]
    notes = [line for line in result.stderr.splitlines() if "note: --mixed-precision auto" in line]
    assert len(notes) == 1 and "fp32 on every process" in notes[0] and "process 0 (on " in notes[0], result.stderr
    assert "covid-ddp-train: 2 CPU processes (gloo), fp32;" in result.stdout


def test_cpu_flag_and_the_fallback_decide_the_device(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.cpu_only(True), "--cpu trains on the CPU even with GPUs"
    assert not distributed.cpu_only(False), "GPUs are used when there are some"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.cpu_only(False), "several processes and no GPU: a CPU group"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.cpu_only(False), "one process: accelerate picks the device (MPS, CPU)"


def test_more_processes_than_gpus_on_a_machine_is_one_line(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="4 processes were started on this machine but it has 2 usable GPU"):
        distributed.check_gpus_per_machine()


def test_a_launch_environment_without_a_launcher_is_refused_in_one_line(small_data, tmp_path):
    """WORLD_SIZE set by hand (or a bare srun): the processes could never find each other."""
    result = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, tmp_path / "run")], check=False,
                 env=clean_env(WORLD_SIZE="2", RANK="0"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert "WORLD_SIZE=2 is set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not" in result.stderr
    assert "torchrun or accelerate launch" in result.stderr
    assert not (tmp_path / "run").exists()


# --- failures that end the whole job --------------------------------------------------------


def test_the_quickstart_recipe_offline_ends_the_job_with_the_download_message(tmp_path):
    """The README's real-recipe line, as written, on a machine that cannot reach MCFAM."""
    offline = "http://127.0.0.1:9/"  # nothing listens on the discard port: connection refused
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    job = launch_job([*ACCELERATE, "--config_file", CONFIG], TRAIN_SCRIPT,
                     ["--mcfam-url", offline, "--output-dir", tmp_path / "run"], tmp_path / "logs", env=env)
    line = assert_failed_together(job, "could not download", "--dataset synthetic")
    assert "Connection refused" in line
    assert not (tmp_path / "run").exists(), "nothing left behind"
    assert "rank      : 0" in job.console.split("Root Cause")[-1], "the launcher names the main process"


def test_processes_on_gpus_and_on_cpus_are_refused_before_the_group_forms(small_data, tmp_path):
    job = launch_job(torchrun_launcher(), HELPERS / "fake_hardware.py",
                     ["1:device=cuda", *small_args(small_data, tmp_path / "run")], tmp_path / "logs")
    assert_failed_together(job, "process 1 (on ", "would train on CUDA GPUs but process 0", "pass --cpu", within=20)
    assert not (tmp_path / "run").exists()


def test_an_fsdp_accelerate_config_is_refused_in_one_line_naming_what_runs(small_data, tmp_path):
    """FSDP would be run as plain DDP on CPUs and hang at the first checkpoint on GPUs: named instead."""
    config = tmp_path / "fsdp.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_machines: 1\nmachine_rank: 0\n"
                      "num_processes: 2\nuse_cpu: true\nmixed_precision: 'no'\nfsdp_config:\n"
                      "  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_sync_module_states: true\n")
    job = launch_job([*ACCELERATE, "--config_file", config], TRAIN_SCRIPT, small_args(small_data, tmp_path / "run"),
                     tmp_path / "logs")
    line = assert_failed_together(job, "the accelerate config asks for FSDP, which covid_ddp does not run",
                                  "MULTI_CPU or MULTI_GPU", "docs/training.md#supported-accelerate-configurations",
                                  within=20)
    assert line.startswith("covid-ddp-train: error:")
    assert not (tmp_path / "run").exists()


def test_every_sharding_engine_and_backend_covid_ddp_does_not_drive_is_named(monkeypatch):
    for variable, name in distributed.SHARDING_ENGINES.items():
        monkeypatch.setenv(variable, "true")
        with pytest.raises(UserError, match=f"asks for {re.escape(name)}, which covid_ddp does not run"):
            distributed.refuse_unsupported_engine()
        monkeypatch.delenv(variable)
    distributed.refuse_unsupported_engine()
    from accelerate.utils import DistributedType

    for chosen in ("XLA", "MULTI_NPU", "MULTI_XPU"):
        with pytest.raises(UserError, match=f"accelerate chose distributed_type {chosen}, which covid_ddp does not run"):
            distributed.refuse_unsupported_type(DistributedType(chosen))
    for supported in ("NO", "MULTI_CPU", "MULTI_GPU"):
        distributed.refuse_unsupported_type(DistributedType(supported))


def test_bad_data_ends_the_job_in_one_line(tmp_path):
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]
    labels[7] = 0
    data = write_mcfam(tmp_path / "data", np.zeros((100, 64, 64), np.uint8), labels)
    job = launch_job(torchrun_launcher(), TRAIN_SCRIPT, small_args(data, tmp_path / "run"), tmp_path / "logs")
    assert_failed_together(job, "train_labels.npz", "first bad row: 7")
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_ends_the_job_in_one_line(small_data, tmp_path):
    (tmp_path / "taken").write_text("the user's file")
    job = launch_job(torchrun_launcher(), TRAIN_SCRIPT, small_args(small_data, tmp_path / "taken"),
                     tmp_path / "logs")
    assert_failed_together(job, "is a file, not a folder", "--output-dir")
    assert (tmp_path / "taken").read_text() == "the user's file"


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB filesystem (tmpfs): room for the run's first checkpoint (11 MB), not its second."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_on_the_main_process_ends_the_job_and_keeps_the_last_checkpoint(small_data, small_disk, tmp_path):
    run_dir = small_disk / "run"
    job = launch_job(torchrun_launcher(), TRAIN_SCRIPT, small_args(small_data, run_dir), tmp_path / "logs")
    line = assert_failed_together(job, "No space left on device", "--resume auto")
    assert "checkpoints/epoch_002" in line
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch_001"], "no half-written checkpoint"
    assert complete_checkpoints(run_dir) and not (run_dir / "COVID_binary_classifier.pth").exists()


def test_a_figure_that_fails_is_a_warning_and_training_goes_on(small_data, tmp_path):
    job = launch_job(torchrun_launcher(), HELPERS / "faulty_train.py",
                     ["figure:1", *small_args(small_data, tmp_path / "run", "--log-images-every", "1", "--epochs", "1")],
                     tmp_path / "logs")
    assert job.returncode == 0, job.console[-3000:]
    warnings = [line for line in job.ranks[0].splitlines() if "warning: could not draw" in line]
    assert len(warnings) == 1 and "the TensorBoard figures of epoch 1" in warnings[0], job.ranks[0]
    assert "could not draw" not in job.ranks[1]
    assert (tmp_path / "run" / "metrics.json").exists()
