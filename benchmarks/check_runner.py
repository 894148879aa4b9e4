"""Running a check's steps so that a kill at any moment loses at most the step in progress.

Used by ``benchmarks/gpu_check.py``. Three guarantees, each for the minutes a lent GPU gives:

- ``Report``: the check's JSON is rewritten whole, atomically, after every change (a step's
  start, its end, a throughput variant): whatever kills the check, even SIGKILL, the file on
  disk is a valid JSON of everything finished.
- ``StepRunner.run``: each step is a child process in a session of its own, its output in a
  log file; on a timeout or a stop its whole tree is ended (SIGTERM, then SIGKILL after a
  grace), torchrun's workers included (they start sessions of their own, so a process group
  alone would miss them and leave them holding the GPU).
- A deadline and SIGTERM/SIGINT: each step's timeout is capped by the time left; a step that
  could not finish in it is not started; a signal ends the step in progress, and every step
  left is recorded as not run, with why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

# Seconds kept back from the deadline: ending a step's processes and writing the JSON.
RESERVE_S = 10
# Seconds a step's processes get between SIGTERM and SIGKILL.
GRACE_S = 5
POLL_S = 0.25


class Report:
    """The JSON: a header, one row per step (in the order the steps are planned) and a verdict."""

    def __init__(self, path: Path, header: dict, planned: list[str]):
        self.path, self.header = path, header
        self.steps = {name: {"ok": None, "not_run": "not reached yet"} for name in planned}

    def step(self, name: str, row: dict) -> None:
        self.steps[name] = row
        self.save()

    def update(self, name: str, **fields) -> None:
        self.steps[name].update(fields)
        self.save()

    def as_dict(self) -> dict:
        finished = [row for row in self.steps.values() if row.get("ok") is not None]
        return {**self.header, "steps": self.steps,
                "complete": len(finished) == len(self.steps),
                "ok": all(row.get("ok") is True for row in self.steps.values())}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as handle:
            handle.write(json.dumps(self.as_dict(), indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)  # a reader, or a kill, sees the old file or the new one


class StepRunner:
    """Starts steps as child processes under one deadline, and ends them on a timeout or a signal."""

    def __init__(self, deadline_s: float, logs: Path, env: dict, cwd: Path):
        self.started = time.monotonic()
        self.deadline_s, self.logs, self.env, self.cwd = deadline_s, logs, env, cwd
        self.stopped_by: str | None = None
        logs.mkdir(parents=True, exist_ok=True)

    def handle_signals(self) -> None:
        """SIGTERM (a command's time limit, a scheduler) and SIGINT (Ctrl-C) stop the check: the step
        in progress is ended within POLL_S and the rest recorded as not run. The handler only sets a
        flag: a write of the JSON is never cut in half."""
        def stop(signum, frame):
            self.stopped_by = signal.Signals(signum).name
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def time_left(self) -> float:
        return self.deadline_s - self.elapsed()

    def why_not_start(self, needs_s: float) -> str | None:
        """Why a step that needs about ``needs_s`` seconds should not start now, or None."""
        if self.stopped_by:
            return f"the check was stopped ({self.stopped_by}) before this step"
        left = self.time_left() - RESERVE_S
        if left < needs_s:
            return (f"{max(left, 0):.0f} s were left of --deadline {self.deadline_s:.0f}; the step needs about "
                    f"{needs_s:.0f}")
        return None

    def run(self, name: str, command: list[str], cap_s: float, env: dict | None = None,
            on_poll=None) -> dict:
        """Run ``command``; returns {rc, seconds, log, timed_out/stopped}. ``rc`` is None when it was
        ended. ``on_poll()`` is called about every POLL_S while it runs (to copy partial results)."""
        if self.stopped_by:
            return {"rc": None, "seconds": 0.0, "log": None, "stopped": f"{self.stopped_by} before it started"}
        timeout = max(1.0, min(cap_s, self.time_left() - RESERVE_S))
        log = self.logs / f"{name}.log"
        started = time.monotonic()
        with open(log, "w") as output:
            child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env or self.env,
                                     cwd=self.cwd, start_new_session=True, stdin=subprocess.DEVNULL)
            ended = None
            while child.poll() is None:
                if self.stopped_by:
                    ended = {"stopped": f"{self.stopped_by} after {time.monotonic() - started:.0f} s"}
                elif time.monotonic() - started > timeout:
                    ended = {"timed_out": f"ended after {timeout:.0f} s (the step's cap {cap_s:.0f} s, or the "
                                          f"time left of --deadline)"}
                if ended:
                    end_tree(child)
                    break
                if on_poll is not None:
                    on_poll()
                time.sleep(POLL_S)
        if on_poll is not None:
            on_poll()
        return {"rc": None if ended else child.returncode, "seconds": round(time.monotonic() - started, 1),
                "log": str(log), **(ended or {})}


def end_tree(child: subprocess.Popen) -> None:
    """SIGTERM to the child, its session and every descendant, SIGKILL to what is left after GRACE_S.
    Descendants are listed first: once their parent dies they are re-parented and lost from view."""
    try:
        tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    _signal_all(child, tree, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=GRACE_S)
    if alive:
        _signal_all(child, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=GRACE_S)
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def _signal_all(child: subprocess.Popen, processes: list, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)  # the child's own session: anything it forked and kept
    except (ProcessLookupError, PermissionError):
        pass
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def log_tail(log: str | None, characters: int = 3000) -> str:
    text = Path(log).read_text(errors="replace") if log and Path(log).is_file() else ""
    return text[-characters:]


def last_result(log: str | None) -> dict | None:
    """The last ``RESULT {json}`` line a probe printed, or None."""
    text = log_tail(log, 10**7)
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT ")) if lines else None
