"""Interruptions of real 2-process runs: signals, a killed rank, a killed launcher, a requeued Slurm job.

Each ends, after a restart or a resume, with exactly the weights of the same run never
interrupted (``uninterrupted``): on the CPU a resume is bit-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import trackers_check
from conftest import (
    HELPERS,
    ROOT,
    TRAIN_SCRIPT,
    as_a_terminal_starts_it,
    clean_env,
    free_port,
    run,
    small_args,
    torchrun,
)

from covid_ddp.calibration import fold_temperature
from covid_ddp.training.checkpoint import complete_checkpoints
from covid_ddp.training.run_folder import RunLock

# 252 training images at batch 20: 12 steps an epoch. The ranks agree (and may stop) every 5 steps,
# so a stop lands inside an epoch (step 5 or 10) or at its end (12). Augmentation and
# --balance-sources: their draws must resume exactly too (streams of (seed, epoch, rank, step)).
# The fine-tuner's recipe too: AdamW's moments, the cosine's step, the weight average (validated,
# selected and shipped) all in the checkpoint. (The seed's recipe: the other files' resumes.)
TRIAL_FLAGS = ("--epochs", "2", "--batch-size", "20", "--log-every", "5", "--augment", "--augment-acquisition",
               "--augment-marks", "--balance-sources", "--optimizer", "adamw", "--weight-decay", "0.05",
               "--schedule", "cosine", "--warmup-epochs", "1", "--label-smoothing", "0.1", "--ema", "0.9")
STOP_INSIDE_AN_EPOCH = "sigterm:17"  # signalled after step 5 of epoch 2: stopped there, 7 steps before its end
STOPPED_AT = "epoch_002_step_00005"
PLACEMENTS = {"device": ("--data-on-device", "yes"), "DataLoader": ("--data-on-device", "no")}


def _start_two_process_run(data, output_dir, *script, extra=(), launcher_flags=(), processes=2) -> subprocess.Popen:
    """torchrun in a session of its own: killing its process group is what a closed terminal does."""
    rendezvous = launcher_flags or ("--master_addr", "127.0.0.1", "--master_port", str(free_port()))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *rendezvous,
               *map(str, script or [TRAIN_SCRIPT]),
               *map(str, small_args(data, output_dir, *TRIAL_FLAGS, *extra))]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                            start_new_session=True)


def _wait_for(path, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _workers_of(run_dir, launcher) -> list[int]:
    """The launcher's workers: its children that run the training script (a child it has forked but
    not yet exec'd still shows the launcher's own command line, and is not one yet; a child a worker
    forks, before it execs, shows the worker's, and is the worker's, not the launcher's)."""
    found = subprocess.run(["pgrep", "-f", f"output-dir {run_dir} "], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != launcher.pid and _parent_of(int(pid)) == launcher.pid
            and "torch.distributed.run" not in _command_of(int(pid))]


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (an exited orphan stays a zombie until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    """The reference: the same 2-process, 2-epoch run, never stopped."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    launcher = _start_two_process_run(small_data, output_dir)
    _, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr[-3000:]
    return output_dir


def _unfolded_weights(run_dir) -> tuple[dict, float]:
    """A run's shipped weights in float64 with its temperature multiplied back into fc2, and the temperature."""
    weights = torch.load(run_dir / "COVID_binary_classifier.pth", weights_only=True)
    temperature = json.loads((run_dir / "COVID_binary_classifier.json").read_text()).get("temperature", 1.0)
    return fold_temperature({key: value.double() for key, value in weights.items()}, "fc2", 1 / temperature), temperature


def _assert_same_run(resumed_dir, reference_dir, tolerance: float = 0.0, temperature_rtol: float = 0.0) -> None:
    """The same trained weights, compared with each run's temperature taken back out of fc2: runs that
    validated in batches of other sizes fit it on scores that differ in float32 round-off, and
    fc2 divided by a temperature far from 1 carries that difference into the weights (2e-6 on a
    CPU without bf16, where these small runs train in fp32 and fit a temperature of 0.05)."""
    (reference, t_reference), (resumed, t_resumed) = (_unfolded_weights(d) for d in (reference_dir, resumed_dir))
    assert t_resumed == pytest.approx(t_reference, rel=temperature_rtol, abs=0)
    worst = max((resumed[key] - reference[key]).abs().max().item() for key in reference)
    print(f"max |weight difference| after resume: {worst:.3g}")  # shown with pytest -s
    assert worst <= tolerance, f"max |weight difference| {worst:.3g} (bit-identical on the same process count)"
    history = [json.loads((d / "metrics.json").read_text())["history"] for d in (reference_dir, resumed_dir)]
    assert [h["validation_loss"] for h in history[1]] == pytest.approx([h["validation_loss"] for h in history[0]], abs=1e-6)
    assert [h["train_loss"] for h in history[1]] == pytest.approx([h["train_loss"] for h in history[0]], abs=1e-6)
    tests = [json.loads((d / "metrics.json").read_text())["test"] for d in (reference_dir, resumed_dir)]
    assert tests[1]["confusion_matrix"] == tests[0]["confusion_matrix"]
    assert tests[1]["loss"] == pytest.approx(tests[0]["loss"], abs=1e-6)


def _resume(data, output_dir, *extra, how="latest") -> None:
    torchrun(2, TRAIN_SCRIPT, small_args(data, output_dir, *TRIAL_FLAGS, *extra, "--resume", how), timeout=240)


def _launch(processes: int, script, args, check=True, env=None):
    """The script as a user starts it: torchrun for several processes, plain python for one."""
    if processes == 1:
        return run([sys.executable, *script, *args], timeout=240, check=check, env=env)
    return torchrun(processes, script[0], [*script[1:], *args], timeout=240, check=check, env=env)


def test_a_stop_inside_an_epoch_resumes_exactly(small_data, tmp_path, uninterrupted):
    """SIGTERM to the launcher (which forwards it) after step 5 of epoch 2, with the set in host
    memory (the DataLoader path): every rank stops at that step with a checkpoint, and the
    resumed run trains the epoch's 7 remaining steps in their order, bit for bit.

    Tracked by MLflow (a sqlite store) and W&B (offline) where they are installed (CI): the stop
    ends their runs as KILLED, the resume logs on into the same ones and ends them FINISHED with
    the run's files; the main process alone logs; a resume without tensorboard writes it nothing."""
    run_dir, flags = tmp_path / "run", (*TRIAL_FLAGS, *PLACEMENTS["DataLoader"])
    tracked = ("--log-with", "tensorboard,mlflow,wandb") if trackers_check.INSTALLED else ()
    env = clean_env(**trackers_check.tracker_env(tmp_path))
    stopped = _launch(2, [HELPERS / "faulty_train.py", STOP_INSIDE_AN_EPOCH],
                      small_args(small_data, run_dir, *flags, *tracked), check=False, env=env)
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM at epoch 2, step 5") == 1, stopped.stderr[-3000:]
    assert f"--resume auto --output-dir {run_dir}" in stopped.stderr
    assert complete_checkpoints(run_dir)[-1].name == STOPPED_AT, "strictly inside the epoch"
    assert not (run_dir / "COVID_binary_classifier.pth").exists()
    if tracked:
        assert trackers_check.mlflow_run(tmp_path, run_dir)[1].info.status == "KILLED"
        tracked = ("--log-with", "mlflow,wandb")
        trackers_check.add_a_figure_in_a_subfolder(run_dir)  # as the audit's audit-test/audit.png
    events = sorted((run_dir / "tensorboard").rglob("*"))
    resumed = _launch(2, [TRAIN_SCRIPT], small_args(small_data, run_dir, *flags, *tracked, "--resume", "auto"),
                      env=env)
    assert f"Resumed from {run_dir / 'checkpoints' / STOPPED_AT} (epoch 1 done, 5 steps of epoch 2)" in resumed.stdout
    _assert_same_run(run_dir, uninterrupted)  # which trained with the set on the device: the same batches
    for folder, loader in ((uninterrupted, "device"), (run_dir, "DataLoader")):
        assert json.loads((folder / "config.json").read_text())["distributed"]["train_loader"] == loader
    if tracked:
        assert sorted((run_dir / "tensorboard").rglob("*")) == events, "--log-with without tensorboard"
        trackers_check.assert_logged_to_mlflow(tmp_path, run_dir, steps_per_epoch=12, processes=2)
        trackers_check.assert_logged_to_wandb(tmp_path, run_dir, stopped_in_epoch=2)


def test_a_stop_during_a_long_validation_pass_saves_at_once_and_resumes_exactly(small_data, tmp_path,
                                                                                 uninterrupted):
    """SIGTERM inside epoch 1's validation (7 batches of a second): the ranks agree before the next
    batch and save the epoch's last step, instead of validating on, checkpointing and training into
    epoch 2 while torchrun's 30 s kill grace runs out. The resumed run validates epoch 1 again and
    ends with the uninterrupted run's weights (to float32 round-off); the finished folder keeps no
    mid-epoch checkpoint."""
    run_dir, flags = tmp_path / "run", (*TRIAL_FLAGS, "--eval-batch-size", "4")
    stopped = _launch(2, [HELPERS / "faulty_train.py", "slowval:1"], small_args(small_data, run_dir, *flags),
                      check=False)
    assert stopped.stderr.count("stopped by SIGTERM at epoch 1, step 12") == 1, stopped.stderr[-3000:]
    assert [path.name for path in complete_checkpoints(run_dir)] == ["epoch_001_step_00012"]
    assert "Validation set" not in stopped.stdout, "stopped inside the pass, not after it"
    resumed = _launch(2, [TRAIN_SCRIPT], small_args(small_data, run_dir, *flags, "--resume", "auto"))
    assert "(epoch 0 done, 12 steps of epoch 1)" in resumed.stdout
    # Validation in batches of 4 here, of 60 in the reference: its float32 scores, and the temperature
    # fitted on them, may differ in round-off.
    _assert_same_run(run_dir, uninterrupted, tolerance=1e-6, temperature_rtol=1e-4)
    assert [path.name for path in complete_checkpoints(run_dir)] == ["epoch_001", "epoch_002"]


def test_a_stop_during_a_checkpoint_write_stops_with_that_checkpoint(small_data, tmp_path):
    """SIGTERM while epoch 1's checkpoint is written: the write ends, and the run stops with it at
    once instead of training into epoch 2 (one process: the agreement is the same code)."""
    run_dir = tmp_path / "run"
    stopped = _launch(1, [HELPERS / "faulty_train.py", "termsave:1"], small_args(small_data, run_dir, *TRIAL_FLAGS),
                      check=False)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"stopped by SIGTERM after epoch 1; saved {run_dir / 'checkpoints' / 'epoch_001'}" in stopped.stderr
    assert [path.name for path in complete_checkpoints(run_dir)] == ["epoch_001"]
    assert "Train Epoch: 2" not in stopped.stdout


# Another process count splits each global batch otherwise, so only float64 keeps the runs within
# 1e-6 (see faulty_train's float64); without dropout and augmentation, whose streams are per rank,
# and with --sync-bn, 1, 3 and 8 processes compute the same steps. A global batch of 24, which 1, 3
# and 8 processes share: 10 steps in the one epoch, signalled after step 2 and stopped at step 5.
RECOUNT_FLAGS = ("--epochs", "1", "--batch-size", "24", "--eval-batch-size", "24", "--log-every", "5", "--sync-bn",
                 "--dropout", "0", "--mixed-precision", "no", "--balance-sources",
                 # The fine-tuner's recipe on 8 and 3 processes: the average shared from rank 0, the cosine's step.
                 "--optimizer", "adamw", "--weight-decay", "0.05", "--schedule", "cosine", "--label-smoothing", "0.1",
                 "--ema", "0.9")
RECOUNT_STOP, RECOUNT_STOPPED_AT = "sigterm:2", "epoch_001_step_00005"


@pytest.fixture(scope="module")
def uninterrupted_float64(small_data, tmp_path_factory):
    """The reference of the next test: one process, float64, never stopped."""
    output_dir = tmp_path_factory.mktemp("reference_float64") / "run"
    _launch(1, [HELPERS / "faulty_train.py", "float64"], small_args(small_data, output_dir, *RECOUNT_FLAGS))
    return output_dir


# The same process count resumes bit for bit (above: the DataLoader path; the killed launcher's and
# Slurm's trials resume 2 processes on the device, mostly inside an epoch); here another count.
def test_a_stop_inside_an_epoch_resumes_on_another_process_count(small_data, tmp_path, uninterrupted_float64):
    """The global batch is the same on any process count: the resumed processes share out the
    epoch's remaining global batches, the same images in the same steps. A job of a full 8-GPU
    node, stopped inside an epoch and requeued onto 3 GPUs, ends within 1e-6 of the run never stopped."""
    run_dir, flags = tmp_path / "run", (*RECOUNT_FLAGS, *PLACEMENTS["DataLoader"])
    _launch(8, [HELPERS / "faulty_train.py", f"float64,{RECOUNT_STOP}"], small_args(small_data, run_dir, *flags),
            check=False)
    assert complete_checkpoints(run_dir)[-1].name == RECOUNT_STOPPED_AT, "strictly inside the epoch"
    resumed = _launch(3, [HELPERS / "faulty_train.py", "float64"],
                      small_args(small_data, run_dir, *flags, "--resume", "auto"))
    assert "(epoch 0 done, 5 steps of epoch 1)" in resumed.stdout
    _assert_same_run(run_dir, uninterrupted_float64, tolerance=1e-6, temperature_rtol=1e-4)


def test_a_killed_rank_is_restarted_by_the_launcher_and_the_run_ends_exact(small_data, tmp_path, uninterrupted):
    """torchrun --max-restarts 1 with --resume auto: a worker's kill -9 inside an epoch costs a
    restart, not the run. (Without distributed.join_restarted_group half of these restarts
    failed to connect.) A kill during a checkpoint write: test_a_killed_launcher_takes_its_workers_with_it."""
    run_dir = tmp_path / "run"
    restarts = ("--max-restarts", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port()))
    launcher = _start_two_process_run(small_data, run_dir, extra=("--resume", "auto"), launcher_flags=restarts)
    _wait_for(run_dir / "checkpoints" / "epoch_001")
    time.sleep(0.3)
    os.kill(max(_workers_of(run_dir, launcher)), signal.SIGKILL)  # rank 1 (started last) dies at once
    stdout, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "Resumed from" in stdout, "the restarted group continued from a checkpoint"
    _assert_same_run(run_dir, uninterrupted)


def _wait_for_workers(run_dir, launcher, timeout=60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(workers := _workers_of(run_dir, launcher)) < 2:
        assert time.monotonic() < deadline and launcher.poll() is None, "the workers never started"
        time.sleep(0.01)
    return workers


@pytest.mark.parametrize("moment", ["during start-up", "inside an epoch", "during a checkpoint write"])
def test_a_killed_launcher_takes_its_workers_with_it(small_data, tmp_path, uninterrupted, moment):
    """kill -9 of the launcher's whole process group (a closed terminal): the workers, in sessions
    of their own, get SIGTERM from the kernel (launcher_watch), stop (with a checkpoint once they
    train), free the lock. Killed halfway through a checkpoint write, --resume auto goes past the
    half-written one to the uninterrupted run's weights (inside an epoch, the checkpoint is the
    one a SIGTERM writes, whose resume the tests above check; killed during start-up, there is
    nothing to resume: the folder holds no checkpoint and its lock is free)."""
    run_dir = tmp_path / "run"
    script, wait_for = (), run_dir / "checkpoints" / "epoch_001"
    if moment == "inside an epoch":  # epoch 2's 12 steps made 3 s long: the kill lands inside it on any machine
        script = (HELPERS / "faulty_train.py", "slowsteps:12")
    if moment == "during a checkpoint write":
        script, wait_for = (HELPERS / "faulty_train.py", "slowsave:5"), run_dir / "checkpoints" / "epoch_002.tmp"
    launcher = _start_two_process_run(small_data, run_dir, *script)
    if moment == "during start-up":  # as soon as the workers exist: importing torch, before any group
        workers = _wait_for_workers(run_dir, launcher)
    else:
        _wait_for(wait_for)
        time.sleep(0.3)
        workers = _workers_of(run_dir, launcher)
    assert len(workers) == 2
    os.killpg(launcher.pid, signal.SIGKILL)
    killed = time.monotonic()
    while any(_alive(pid) for pid in workers) and time.monotonic() - killed < 60:
        time.sleep(0.05)
    gone = time.monotonic() - killed
    launcher.communicate(timeout=10)
    print(f"workers gone {gone:.1f} s after the launcher's kill -9")
    assert gone < 10, "no worker outlives its launcher"
    assert not (run_dir / "metrics.json").exists(), "the workers stopped instead of training on as orphans"
    if moment == "during start-up":
        assert not complete_checkpoints(run_dir), "killed before training"
    if moment == "inside an epoch":
        assert any("_step_" in p.name for p in complete_checkpoints(run_dir)), "they stopped with a checkpoint"
    lock = RunLock(run_dir)
    lock.acquire()  # free: nobody holds the run any more
    lock.release()
    if moment == "during a checkpoint write":  # (a half-written checkpoint is left behind: resumed past it)
        _resume(small_data, run_dir, how="auto")
        _assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize("signalled, processes", [("the launcher", 2), ("the main process alone", 3)])
def test_a_stop_during_start_up_ends_in_one_line_even_while_waiting_for_the_others(small_data, tmp_path, signalled,
                                                                                   processes):
    """SIGTERM while the last rank still reads its data (a minute's stall) and rank 0 waits for it
    inside a collective, where no Python handler runs: the main process ends within seconds in one
    line, no rank prints a traceback, and the run folder was never made (nothing is claimed before
    the data is read)."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    launcher = _start_two_process_run(small_data, run_dir, HELPERS / "faulty_train.py", f"stall:{processes - 1}",
                                      processes=processes, extra=("--batch-size", str(12 * processes)), launcher_flags=(
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--tee", "3", "--log-dir", str(logs)))
    pid_files = [Path(f"{run_dir}.rank{rank}.pid") for rank in range(processes)]
    for pid_file in pid_files:
        _wait_for(pid_file)
    time.sleep(1.0)  # rank 0 is inside the first collective by now, rank 1 asleep
    main_process = int(pid_files[0].read_text())
    os.kill(launcher.pid if signalled == "the launcher" else main_process, signal.SIGTERM)
    sent = time.monotonic()
    while _alive(main_process) and time.monotonic() - sent < 60:
        time.sleep(0.05)
    gone = time.monotonic() - sent
    launcher.communicate(timeout=60)
    print(f"the main process ended {gone:.1f} s after SIGTERM")
    assert gone < 15, "a stop signal must not wait for the others"
    ranks = {int(path.parent.name): path.read_text() for path in logs.rglob("stderr.log")}
    assert sorted(ranks) == list(range(processes))
    said = [line for line in ranks[0].splitlines() if "error:" in line]
    assert len(said) == 1 and said[0].startswith("covid-ddp-train: error: interrupted by SIGTERM"), ranks[0][-3000:]
    for rank, text in ranks.items():
        assert "Traceback" not in text, f"rank {rank}:\n{text[-3000:]}"
    assert not run_dir.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_plain_run_reads_its_data_ends_in_one_line(small_data, tmp_path, signum):
    """One process, stopped while it reads its data (before any run folder): one line, exit
    128 + the signal (not a failure the ranks agree on, which would be exit 2)."""
    run_dir = tmp_path / "run"
    command = [sys.executable, str(HELPERS / "faulty_train.py"), "stall:0",
               *map(str, small_args(small_data, run_dir))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                               preexec_fn=as_a_terminal_starts_it)
    _wait_for(Path(f"{run_dir}.rank0.pid"))
    time.sleep(0.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"covid-ddp-train: error: interrupted by "
                                                   f"{signal.Signals(signum).name}"), stderr[-2000:]
    assert not run_dir.exists()


# A worker as a launcher starts it (its own session, TORCHELASTIC_RUN_ID set), whose launcher then
# exits: before the worker arms launcher_watch ("early"), or after ("late").
WORKER = """
import os, sys, time
from pathlib import Path
folder, launcher_dies, launcher = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(folder / "pid").write_text(str(os.getpid()))
while launcher_dies == "early" and os.getppid() == launcher:  # until this process is left to a reaper
    time.sleep(0.01)
from covid_ddp import launcher_watch
launcher_watch.arm("worker")
(folder / "armed").touch()
time.sleep(30)
(folder / "outlived its launcher").touch()
"""
LAUNCHER = """
import os, subprocess, sys, time
from pathlib import Path
folder, launcher_dies = Path(sys.argv[1]), sys.argv[2]
stderr = open(folder / "worker.err", "w")
subprocess.Popen([sys.executable, "-c", sys.argv[3], *sys.argv[1:3], str(os.getpid())], stderr=stderr,
                 start_new_session=True)
started = time.monotonic()
while launcher_dies == "late" and not (folder / "armed").exists() and time.monotonic() - started < 20:
    time.sleep(0.01)
"""


@pytest.mark.parametrize("launcher_dies", ["early", "late"])
def test_a_worker_never_outlives_its_launcher(tmp_path, launcher_dies):
    """early: the launcher is gone when the worker arms, which exits at once, saying so; late: the
    kernel sends the armed worker SIGTERM when its launcher exits."""
    subprocess.run([sys.executable, "-c", LAUNCHER, tmp_path, launcher_dies, WORKER], check=True, timeout=30,
                   env=clean_env(TORCHELASTIC_RUN_ID="test"))
    _wait_for(tmp_path / "pid", timeout=30)
    time.sleep(0.1)  # written whole
    worker = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.05)
    assert not (tmp_path / "outlived its launcher").exists()
    said = (tmp_path / "worker.err").read_text()
    if launcher_dies == "early":
        assert not (tmp_path / "armed").exists() and "its launcher ended before this process started" in said
    else:
        assert (tmp_path / "armed").exists() and said == ""


def test_a_launcher_that_is_pid_1_is_alive(tmp_path):
    """In a container the launcher may be pid 1 itself (docker run image torchrun ...): its workers
    must not take it for the init they would be left to."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"]).returncode:
        pytest.skip("needs unshare -p (root) to start a launcher as pid 1 of its own namespace")
    subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", LAUNCHER, tmp_path, "late", WORKER],
                   check=True, timeout=60, env=clean_env(TORCHELASTIC_RUN_ID="test"))
    assert (tmp_path / "armed").exists(), (tmp_path / "worker.err").read_text()
    assert (tmp_path / "worker.err").read_text() == ""


def test_ctrl_c_on_a_plain_python_run_saves_and_says_how_to_resume(small_data, tmp_path):
    # 300 epochs, stopped after about 2: the Ctrl-C must land while the run trains, however long a
    # loaded machine keeps this process from sending it (bf16 runs 30 of these epochs in seconds,
    # and Popen.send_signal to a process that has ended sends nothing).
    command = [sys.executable, str(TRAIN_SCRIPT), *map(str, small_args(small_data, tmp_path / "run", "--epochs", "300",
                                                                       "--batch-size", "20"))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                               preexec_fn=as_a_terminal_starts_it)
    deadline = time.monotonic() + 120
    while not complete_checkpoints(tmp_path / "run"):  # any epoch's: only the last 3 are kept
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "stopped by SIGINT" in stderr and "--resume auto" in stderr and "Traceback" not in stderr
    assert len(complete_checkpoints(tmp_path / "run")) >= 2


# --- launch/slurm.sbatch, as Slurm runs it ----------------------------------------------------
#
# On one node, with stand-ins: ``srun`` starts its command as the job step (as srun does on
# each node; a signal to it reaches torchrun, as srun forwards it); ``scontrol requeue``
# records the requeue. The job then runs again with the same job id, as a requeued job does.

SBATCH = ROOT / "launch" / "slurm.sbatch"
SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done      # srun's own options
exec "$@"
"""
SCONTROL = """#!/bin/bash
case "$1 $2" in
    "show hostnames") echo 127.0.0.1 ;;
    requeue*) echo "$2" >> "$STUBS/requeued" ;;
esac
"""


@pytest.fixture
def slurm(tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    path = f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}"  # this interpreter's torchrun
    env = clean_env(STUBS=str(stubs), PATH=path, SLURM_JOB_ID="4242", SLURM_NNODES="1",
                    SLURM_JOB_NODELIST="node001", SLURM_SUBMIT_DIR=str(ROOT), NPROC_PER_NODE="2",
                    MASTER_PORT=str(free_port()), RUN_DIR=str(tmp_path / "run"))
    return stubs, env


def test_the_batch_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", SBATCH]).returncode == 0


def test_a_slurm_job_requeued_at_its_time_limit_resumes_and_ends_exact(slurm, small_data, tmp_path, uninterrupted):
    """USR1 (--signal=B:USR1@120) requeues the job; the step stops with a checkpoint; the requeued
    job continues with --resume auto to the uninterrupted run's exact weights. (A start that finds
    the run finished exits 0 with nothing to do: tests/test_resume.py, tests/test_selection.py.)"""
    stubs, env = slurm
    flags = [str(a) for a in small_args(small_data, tmp_path / "ignored", *TRIAL_FLAGS)]
    flags = flags[: flags.index("--output-dir")] + flags[flags.index("--output-dir") + 2:]  # RUN_DIR decides
    run_dir = tmp_path / "run"

    job = subprocess.Popen(["bash", SBATCH, *flags], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "epoch_001").exists():
        assert time.monotonic() < deadline and job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what Slurm sends the batch shell 120 s before the time limit
    stdout, stderr = job.communicate(timeout=120)
    assert (stubs / "requeued").read_text().split() == ["4242"], "requeued once the step had stopped"
    assert "stopping it with a checkpoint, then requeueing it" in stdout and "requeued; the job will resume" in stdout
    assert "stopped by SIGTERM" in stderr and job.returncode != 0
    assert not (run_dir / "metrics.json").exists()

    requeued = subprocess.run(["bash", SBATCH, *flags], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=180)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Resumed from" in requeued.stdout
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    _assert_same_run(run_dir, uninterrupted)
