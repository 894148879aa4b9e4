"""Graceful stop: SIGINT / SIGTERM become a request honoured at the next step boundary.

Every rank installs the handler (launchers forward the signal to every worker; a worker
whose launcher died gets it from the kernel, see ``launcher_watch``). The handler
only records the signal: the ranks swap it with their loss tallies every ``--log-every``
steps (``engine.StepTally``), so they stop at the same optimizer-step boundary, save one
resumable checkpoint together, and exit. A second signal stops at once.
"""

from __future__ import annotations

import signal

from .errors import UserError

# SIGHUP too: torchrun forwards it when its terminal closes. (Not where it is ignored, as under
# nohup: a run started that way must survive its terminal.)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        for sig in _SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:  # Ctrl-C again: the user means it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = self.signum or signum
