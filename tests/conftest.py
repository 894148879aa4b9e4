"""Shared fixtures: small MCFAM-format data on disk and helpers to run the real launchers."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from covid_ddp.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "launch" / "train.py"
PREDICT_SCRIPT = ROOT / "launch" / "predict.py"
EVALUATE_SCRIPT = ROOT / "launch" / "evaluate.py"
HELPERS = Path(__file__).resolve().parent / "helpers"

# A small, quick recipe: 400 images, 2 epochs, global batch 40 (20 per process with 2). No
# TensorBoard figures (~1.5 s a run); tests/test_evaluation.py draws and checks them. No --cpu:
# on this GPU-less machine every run goes through the automatic CPU fallback, as a user's would.
SMALL_RUN = ["--data-dir", "{data}", "--epochs", "2", "--batch-size", "40", "--eval-batch-size", "60",
             "--log-images-every", "0"]


# The files of real multi-process runs, longest first: pytest-xdist hands out whole files in
# collection order, so these start at once instead of finishing last (suite time).
SLOWEST_FIRST = ("test_interruptions.py", "test_distributed.py", "test_launchers.py", "test_cli.py",
                 "test_shortcuts.py", "test_process_counts.py", "test_report.py", "test_download.py",
                 "test_resume.py", "test_selection.py", "test_data_dirs.py", "test_calibration.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


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


def refused(capsys, code: int, *fragments: str) -> None:
    """An in-process command refused its input as a user error: exit 2, one line on stderr (no
    traceback) holding every fragment."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def small_args(data: Path, output_dir: Path, *extra) -> list:
    return [a.format(data=data) for a in SMALL_RUN] + ["--output-dir", output_dir, *extra]


# --- a local MCFAM mirror (the real URL is never called) ----------------------------------------


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


IMAGES = npz_bytes(train_images=np.zeros((8, 64, 64), np.uint8))
LABELS = npz_bytes(train_labels=np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 2])


class FakeMirror:
    """Serves files by name; ``failures[name]`` requests fail with 500 first; ``truncate`` cuts bodies short."""

    def __init__(self):
        self.files = {"train_images64.npz": IMAGES, "train_labels.npz": LABELS}
        self.failures: dict[str, int] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        self.stall_s = 0.0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                mirror.requests.append(name)
                if mirror.failures.get(name, 0) > 0:
                    mirror.failures[name] -= 1
                    self.send_error(500)
                    return
                if name not in mirror.files:
                    self.send_error(404)
                    return
                body = mirror.files[name]
                time.sleep(mirror.stall_s)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in mirror.truncate else body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/MCFAM/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- a multi-process job, as its user sees it and rank by rank --------------------------------


@dataclass
class Job:
    """A finished launcher run: its exit code, wall time, the console (launcher and ranks
    interleaved, each rank's lines prefixed ``[default<rank>]:``) and each rank's own stderr."""

    returncode: int
    seconds: float
    console: str
    ranks: dict


def launch_job(launcher: list, script: Path, args: list, log_dir: Path, timeout: float = 120, env=None,
               cwd=ROOT) -> Job:
    """``launcher`` + ``script args``, with every rank's output also kept per rank (torchrun's
    and accelerate's ``--tee 3`` with a log folder)."""
    log_flags = ["--log-dir", log_dir] if "torch.distributed.run" in map(str, launcher) else ["--log_dir", log_dir]
    command = [*launcher, "--tee", "3", *log_flags, script, *args]
    started = time.monotonic()
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                            env=env or clean_env(), cwd=cwd)
    ranks = {}
    for path in sorted(Path(log_dir).rglob("stderr.log")):  # <run id>/attempt_<n>/<local rank>/stderr.log
        ranks[int(path.parent.name)] = path.read_text()
    return Job(result.returncode, time.monotonic() - started, result.stdout + result.stderr, ranks)


def torchrun_launcher(nproc: int = 2) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc, "--master_addr", "127.0.0.1",
            "--master_port", free_port()]


def assert_failed_together(job: Job, *fragments, within: float = 40.0, ranks: int = 2) -> str:
    """The job failed as one: quickly, one error line written by the main process alone, no
    traceback from any rank. Returns that line."""
    assert job.returncode != 0, job.console[-3000:]
    assert job.seconds < within, f"the job took {job.seconds:.0f} s to end"
    assert sorted(job.ranks) == list(range(ranks)), job.ranks.keys()
    main_errors = [line for line in job.ranks[0].splitlines() if line.startswith("covid-ddp-train: error:")]
    assert len(main_errors) == 1, job.ranks[0][-3000:]
    for rank, text in job.ranks.items():
        assert "Traceback" not in text, f"rank {rank}:\n{text[-3000:]}"
        if rank:
            assert "error" not in text.lower(), f"rank {rank} printed:\n{text[-3000:]}"
    assert job.console.count("covid-ddp-train: error:") == 1, job.console[-3000:]
    for fragment in fragments:
        assert fragment in main_errors[0], main_errors[0]
    return main_errors[0]


def as_a_terminal_starts_it() -> None:
    """Ctrl-C delivered and handled by default, as an interactive shell starts a foreground job.
    A pytest-xdist worker can hand its children SIGINT ignored or blocked (the full suite did:
    the run trained on through the signal), and the training run rightly keeps an ignored
    SIGINT ignored, as under nohup."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
