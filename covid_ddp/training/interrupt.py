"""Graceful stop: SIGINT / SIGTERM become a request honoured at the next step boundary.

Outside the training loop (start-up, the final test) a stop signal ends the command in one
line (``cli.Interrupted``), even while this process waits inside a collective
(``stop_even_while_waiting``).

Every rank installs the handler (launchers forward the signal to every worker; a worker
whose launcher died gets it from the kernel, see ``launcher_watch``). The handler
only records the signal: the ranks swap it with their loss tallies every ``--log-every``
steps (``engine.StepTally``), so they stop at the same optimizer-step boundary, save one
resumable checkpoint together, and exit. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch

from ..cli import is_main_rank, say
from ..errors import Interrupted, UserError

# SIGHUP too: torchrun forwards it when its terminal closes. (Not where it is ignored, as under
# nohup: a run started that way must survive its terminal.)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a stop signal may wait for the main thread to act on it before the process ends anyway.
WAITING_GRACE_S = 5.0
_graceful = threading.Event()  # set while GracefulStop owns the signals: a stop then waits by design


class TrainingInterrupted(UserError):
    """Training stopped on a signal after saving a checkpoint; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequested(Exception):
    """Raised inside the loop, on every rank at the same step, once all agreed to stop."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"signal {signum} at epoch {epoch}, step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step


class GracefulStop:
    """Context manager that records the first stop signal instead of dying on it.

    Only a second Ctrl-C (SIGINT) stops at once. SIGTERM often comes twice for one request
    (Slurm signals every process of a job step, and torchrun forwards its own copy; the
    launcher watchdog may add one), so repeats of it do not cut the checkpoint short.
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> "GracefulStop":
        _graceful.set()
        for sig in _SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        _graceful.clear()

    def _record(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:  # Ctrl-C again: the user means it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = self.signum or signum


def agreed_signal(accelerator, signum: int) -> int:
    """Collective: the stop signal any process received (the largest number; 0: none), in one
    all-reduce of one number, cheap enough to run before every validation batch."""
    if accelerator.num_processes == 1:
        return signum
    flag = torch.tensor([signum], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


@contextlib.contextmanager
def stop_even_while_waiting(prog: str, grace_s: float = WAITING_GRACE_S):
    """A stop signal ends this process even while its main thread waits inside a collective.

    Python runs a signal handler only when the main thread is back in Python code; a rank that
    waits in C++ for another (the rendezvous, a broadcast, a download the others wait for without
    a deadline) would hold the signal for as long as that wait lasts. Python's own C handler
    writes the signal's number to a wake-up pipe even then: a thread reading it gives the main
    thread ``grace_s`` to end by itself (its handler raises ``Interrupted``, the run folder is
    tidied), then says the one line and exits with 128 + the signal number. Idle while
    ``GracefulStop`` holds the signals: there a stop waits for the next agreed step on purpose.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # set_wakeup_fd belongs to the main thread
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    ended = threading.Event()
    threading.Thread(target=_end_when_held, args=(read_end, ended, prog, grace_s), daemon=True,
                     name="covid_ddp-stop-watch").start()
    try:
        yield
    finally:
        ended.set()
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watching thread reads the end of the pipe, and closes its end


def _end_when_held(read_end: int, ended: threading.Event, prog: str, grace_s: float) -> None:
    stops = {int(sig) for sig in _SIGNALS}
    try:
        while received := os.read(read_end, 16):
            signum = next((number for number in received if number in stops), None)
            if signum is None or _graceful.is_set() or ended.wait(grace_s) or _graceful.is_set():
                continue
            if is_main_rank():
                say(f"{prog}: error: {Interrupted(signum)} (this process was waiting for the others of its job)")
            os._exit(128 + signum)
    finally:
        os.close(read_end)
