"""Bad input and faults during training: one clear line, exit 2, nothing finished lost or half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import HELPERS, TRAIN_SCRIPT, clean_env, free_port, run, small_args, torchrun, write_mcfam
from covid_ddp.checkpoint import RunLock, complete_checkpoints, load_weights
from covid_ddp.errors import UserError
from covid_ddp.train import main as train_main

GOOD_LABELS = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]
GOOD_IMAGES = np.random.default_rng(0).integers(0, 256, (100, 64, 64), dtype=np.uint8)


def train_in_process(capsys, data_dir, output_dir, *extra) -> tuple[int, str]:
    code = train_main([str(a) for a in ["--cpu", "--data-dir", data_dir, "--output-dir", output_dir,
                                        "--epochs", "1", "--batch-size", "20", *extra]])
    return code, capsys.readouterr().err


def assert_refused(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _corrupt(path):
    path.write_bytes(path.read_bytes()[:200])


def _not_a_zip(path):
    path.write_text("hello")


@pytest.mark.parametrize("images, labels, damage, fragments", [
    (GOOD_IMAGES, GOOD_LABELS, ("train_images64.npz", _not_a_zip), ["train_images64.npz", "not a readable .npz"]),
    (GOOD_IMAGES, GOOD_LABELS, ("train_labels.npz", _corrupt), ["train_labels.npz", "not a readable .npz"]),
    (GOOD_IMAGES[:, :32, :32], GOOD_LABELS, None, ["train_images64.npz", "(100, 32, 32)"]),
    (np.zeros((100, 64, 64, 3), np.uint8), GOOD_LABELS, None, ["train_images64.npz", "(100, 64, 64, 3)"]),
    (np.full((100, 64, 64), np.nan, np.float32), GOOD_LABELS, None, ["must be uint8", "NaN or inf"]),
    (GOOD_IMAGES, GOOD_LABELS[:, :3], None, ["train_labels.npz", "shape (N, 4)"]),
    (GOOD_IMAGES, np.vstack([GOOD_LABELS[:7], np.zeros((1, 4)), GOOD_LABELS[8:]]), None, ["1 label rows", "first bad row: 7"]),
    (GOOD_IMAGES, np.vstack([GOOD_LABELS[:3], [[0.5, 0.5, 0, 0]], GOOD_LABELS[4:]]), None, ["not one-hot", "first bad row: 3"]),
    (GOOD_IMAGES, GOOD_LABELS[:90], None, ["100 images but 90 labels"]),
    (GOOD_IMAGES[:0], GOOD_LABELS[:0], None, ["holds no images"]),
    (GOOD_IMAGES, np.eye(4, dtype=np.float32)[[0] * 100], None, ["100 non-COVID and 0 COVID", "at least 2 of each"]),
])
def test_bad_data_files_are_refused_in_one_line(capsys, tmp_path, images, labels, damage, fragments):
    data = write_mcfam(tmp_path / "data", images, labels)
    if damage:
        name, spoil = damage
        spoil(data / name)
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, *fragments)
    assert not (tmp_path / "run").exists(), "nothing is left behind"


def test_a_missing_key_lists_the_keys_found(capsys, tmp_path):
    data = write_mcfam(tmp_path / "data", GOOD_IMAGES, GOOD_LABELS)
    np.savez(data / "train_labels.npz", labels=GOOD_LABELS, extra=GOOD_LABELS)
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, "train_labels.npz", "no array named 'train_labels' (found: labels, extra)")


def test_a_pickled_object_array_is_refused(capsys, tmp_path):
    data = write_mcfam(tmp_path / "data", GOOD_IMAGES, GOOD_LABELS)
    np.savez(data / "train_images64.npz", train_images=np.array([{"a": 1}] * 100, dtype=object))
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, "train_images64.npz", "pickled data is refused")


def test_a_resume_path_without_a_checkpoint_is_refused(capsys, small_data, tmp_path):
    (tmp_path / "nothing").mkdir()
    code, err = train_in_process(capsys, small_data, tmp_path / "run", "--resume", tmp_path / "nothing")
    assert_refused(code, err, "--resume", "not a checkpoint folder")
    code, err = train_in_process(capsys, small_data, tmp_path / "empty_run", "--resume", "latest")
    assert_refused(code, err, "--resume latest: no complete checkpoint")
    assert not (tmp_path / "run").exists() and not (tmp_path / "empty_run").exists()


def test_a_second_run_on_a_busy_output_dir_refuses(capsys, small_data, tmp_path):
    busy = RunLock(tmp_path / "run")
    busy.acquire()  # another run holds the folder (flock works across processes alike)
    try:
        code, err = train_in_process(capsys, small_data, tmp_path / "run")
        assert_refused(code, err, "in use by another covid_ddp run")
    finally:
        busy.release()


def test_a_non_finite_loss_stops_before_saving(small_data, tmp_path):
    """Six steps an epoch (252 images / 40): the 9th loss is epoch 2, step 3."""
    result = run([sys.executable, HELPERS / "faulty_train.py", "nan:9", *small_args(small_data, tmp_path / "run")],
                 check=False)
    assert result.returncode == 2
    assert "NaN or infinite at epoch 2, step 3" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["epoch_001"]
    assert not (tmp_path / "run" / "COVID_binary_classifier.pth").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, tmp_path / "run", "--resume", "latest")])
    assert "Resumed from" in resumed.stdout, "the last good checkpoint is intact"


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(small_data, tmp_path):
    """save_state writes 4 files a checkpoint here: the 6th is inside the second checkpoint."""
    result = run([sys.executable, HELPERS / "faulty_train.py", "enospc:6", *small_args(small_data, tmp_path / "run")],
                 check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_001"], "no half-written checkpoint"
    assert load_weights(next((checkpoints / "epoch_001").glob("optimizer.bin")))
    assert not (tmp_path / "run" / "COVID_binary_classifier.pth").exists()


def test_a_local_copy_that_differs_from_its_pin_is_refused(capsys, small_data, tmp_path):
    code, err = train_in_process(capsys, small_data, tmp_path / "run", "--sha256-labels", "ab" * 32)
    assert_refused(code, err, "train_labels.npz: sha256 is", "not the pinned abab")
    assert not (tmp_path / "run").exists()


# --- signals, killed ranks and exact resume (real 2-process runs) ---------------------------

# --augment: its random draws must resume exactly too (they come from the checkpointed RNG).
TRIAL_FLAGS = ("--epochs", "3", "--batch-size", "20", "--augment")


def _start_two_process_run(data, output_dir, *script, extra=()) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *map(str, script or [TRAIN_SCRIPT]),
               *map(str, small_args(data, output_dir, *TRIAL_FLAGS, *extra))]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                            start_new_session=True)


def _wait_for(path, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    """The reference: the same 2-process, 3-epoch run, never stopped."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    launcher = _start_two_process_run(small_data, output_dir)
    _, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr[-3000:]
    return output_dir


def _assert_same_run(resumed_dir, reference_dir) -> None:
    reference = torch.load(reference_dir / "COVID_binary_classifier.pth", weights_only=True)
    resumed = torch.load(resumed_dir / "COVID_binary_classifier.pth", weights_only=True)
    worst = max((resumed[key].double() - reference[key].double()).abs().max().item() for key in reference)
    print(f"max |weight difference| after resume: {worst:.3g}")  # shown with pytest -s
    assert worst <= 1e-6
    history = [json.loads((d / "metrics.json").read_text())["history"] for d in (reference_dir, resumed_dir)]
    assert [h["validation_loss"] for h in history[1]] == pytest.approx([h["validation_loss"] for h in history[0]], abs=1e-6)
    assert [h["train_loss"] for h in history[1]] == pytest.approx([h["train_loss"] for h in history[0]], abs=1e-6)
    tests = [json.loads((d / "metrics.json").read_text())["test"] for d in (reference_dir, resumed_dir)]
    assert tests[1]["confusion_matrix"] == tests[0]["confusion_matrix"]
    assert tests[1]["loss"] == pytest.approx(tests[0]["loss"], abs=1e-6)


def _resume(data, output_dir, *extra) -> None:
    torchrun(2, TRAIN_SCRIPT, small_args(data, output_dir, *TRIAL_FLAGS, *extra, "--resume", "latest"), timeout=240)


def test_sigterm_to_the_launcher_saves_a_checkpoint_and_resume_is_exact(small_data, tmp_path, uninterrupted):
    # Through the DataLoader path (the reference used the device-resident loader): the two must
    # give the same batches, and accelerate's skip_first_batches must resume it exactly.
    dataloader_path = ("--data-on-device", "no")
    launcher = _start_two_process_run(small_data, tmp_path / "run", extra=dataloader_path)
    _wait_for(tmp_path / "run" / "checkpoints" / "epoch_001")
    launcher.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "stopped by SIGTERM at epoch" in stderr and "--resume latest --output-dir" in stderr
    inside_epoch = [p.name for p in complete_checkpoints(tmp_path / "run") if "_step_" in p.name]
    assert inside_epoch, "a checkpoint is saved where training stopped"
    assert not (tmp_path / "run" / "COVID_binary_classifier.pth").exists()
    _resume(small_data, tmp_path / "run", *dataloader_path)
    _assert_same_run(tmp_path / "run", uninterrupted)


@pytest.mark.parametrize("moment", ["inside an epoch", "during evaluation", "during a checkpoint write"])
def test_a_rank_killed_with_sigkill_ends_the_job_and_resume_is_exact(small_data, tmp_path, uninterrupted, moment):
    run_dir = tmp_path / "run"
    if moment == "inside an epoch":
        launcher = _start_two_process_run(small_data, run_dir)
        _wait_for(run_dir / "checkpoints" / "epoch_001")
        time.sleep(0.3)
    elif moment == "during evaluation":  # the 2nd validation pass takes 3 s more
        launcher = _start_two_process_run(small_data, run_dir, HELPERS / "faulty_train.py", "sloweval:2")
        _wait_for(run_dir / "checkpoints" / "epoch_001")
        time.sleep(1.5)
        assert not (run_dir / "checkpoints" / "epoch_002").exists()
    else:  # the 2nd checkpoint's 2nd file takes 3 s more: the kill lands while it is half-written
        launcher = _start_two_process_run(small_data, run_dir, HELPERS / "faulty_train.py", "slowsave:6")
        _wait_for(run_dir / "checkpoints" / "epoch_002.tmp")
        time.sleep(0.5)
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-f", f"output-dir {run_dir}"], capture_output=True,
                                                  text=True).stdout.split() if int(pid) != launcher.pid]
    os.kill(max(workers), signal.SIGKILL)  # one worker (the launcher has the lowest pid) dies at once
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0, "the launcher ends the job"
    assert complete_checkpoints(run_dir), "a complete checkpoint survives"
    _resume(small_data, run_dir)
    _assert_same_run(run_dir, uninterrupted)


def test_ctrl_c_on_a_plain_python_run_saves_and_says_how_to_resume(small_data, tmp_path):
    command = [sys.executable, str(TRAIN_SCRIPT), *map(str, small_args(small_data, tmp_path / "run", "--epochs", "3",
                                                                       "--batch-size", "20"))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    _wait_for(tmp_path / "run" / "checkpoints" / "epoch_001")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert "stopped by SIGINT" in stderr and "--resume latest" in stderr and "Traceback" not in stderr
    assert len(complete_checkpoints(tmp_path / "run")) >= 2


def test_fewer_evaluation_images_than_processes_is_refused():
    from covid_ddp.config import TrainConfig
    from covid_ddp.splits import Split
    from covid_ddp.train import make_loaders

    images, targets = torch.zeros((20, 64, 64), dtype=torch.uint8), torch.zeros(20, dtype=torch.int64)
    split = Split(np.arange(16), np.arange(16, 17), np.arange(17, 20))
    with pytest.raises(UserError, match="the validation part has 1 images, fewer than the 2 processes"):
        make_loaders(images, targets, split, TrainConfig(batch_size=4, eval_batch_size=4), num_processes=2,
                     process_index=0, on_device=True)
