"""Shared fixtures: small MCFAM-format data on disk and helpers to run the real launchers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covid_ddp.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "launch" / "train.py"
PREDICT_SCRIPT = ROOT / "launch" / "predict.py"
HELPERS = Path(__file__).resolve().parent / "helpers"

# A small, quick recipe: 400 images, 2 epochs, global batch 40 (20 per process with 2). No
# TensorBoard figures (~1.5 s a run); tests/test_evaluation.py draws and checks them.
SMALL_RUN = ["--cpu", "--data-dir", "{data}", "--epochs", "2", "--batch-size", "40", "--eval-batch-size", "60",
             "--log-images-every", "0"]


def write_mcfam(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train_images64.npz", train_images=images)
    np.savez(folder / "train_labels.npz", train_labels=labels)
    return folder


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """400 synthetic images in MCFAM files: what the end-to-end runs train on."""
    images, labels = make_synthetic(400, seed=3)
    return write_mcfam(tmp_path_factory.mktemp("small_data"), images, labels)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra) -> dict:
    """The launchers' environment: no inherited distributed variables, few threads, no tqdm bars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    # PYTHONPATH: the launched scripts import this checkout's covid_ddp, whatever is installed.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **extra)
    return env


def run(command: list, timeout: float = 180, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                            env=env or clean_env(), cwd=ROOT)
    if check and result.returncode != 0:
        # The launcher's summary fills the end of stderr; the cause is usually near the start.
        stderr = result.stderr if len(result.stderr) < 8000 else result.stderr[:4000] + "\n...\n" + result.stderr[-4000:]
        raise AssertionError(f"{command} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{stderr}")
    return result


def torchrun(nproc: int, script: Path, args: list, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc,
               "--master_addr", "127.0.0.1", "--master_port", free_port(), script, *args]
    return run(command, **kwargs)


def small_args(data: Path, output_dir: Path, *extra) -> list:
    return [a.format(data=data) for a in SMALL_RUN] + ["--output-dir", output_dir, *extra]
