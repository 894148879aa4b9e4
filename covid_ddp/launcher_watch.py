"""A worker process never outlives the launcher that started it.

torchrun and a multi-process ``accelerate launch`` start their workers in sessions of their
own, so when the launcher dies (``kill -9``, a closed terminal, a crashed node agent) nothing
reaches the workers: they would sleep in the rendezvous or train on as orphans, holding the
run's lock. ``arm`` asks the kernel to send this process SIGTERM the moment its parent dies
(Linux's ``PR_SET_PDEATHSIG``): before training, SIGTERM ends the process in one line, within
seconds even while it waits for the others (``training.interrupt.stop_even_while_waiting``); during
training it is a graceful stop (``training.interrupt.GracefulStop``: an agreed checkpoint, then exit). A launcher that died before ``arm`` ran is noticed too: the process was
then left to init (or a reaper like it) and exits at once. Without ``prctl`` (not Linux), a
thread polls the parent instead. The parent must be the launcher: a wrapper script between them
(``torchrun --no-python wrapper.sh``) must ``exec`` Python, or the worker is tied to the shell.

This module imports nothing heavy: ``launch/train.py`` arms it before torch is imported, so a
launcher killed while its workers start takes them with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

POLL_S = 0.5  # how often the fallback thread checks the parent
_PR_SET_PDEATHSIG = 1
# What an orphan is handed to: init, or a process that reaps orphans in its place.
_REAPERS = {"init", "systemd", "tini", "dumb-init", "docker-init", "catatonit", "s6-svscan", "runit", "launchd"}
_armed = False


def arm(prog: str = "covid-ddp") -> None:
    """Under an elastic launcher (torchrun, ``accelerate launch`` with several processes), tie this
    process's life to the launcher's. Idempotent; nothing happens without such a launcher."""
    global _armed
    if _armed or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    _armed = True
    if not _set_parent_death_signal(signal.SIGTERM):
        _poll_parent(os.getppid())
    if _launcher_gone():
        _say(f"{prog}: its launcher ended before this process started (left to pid {os.getppid()}): exiting")
        os._exit(128 + signal.SIGTERM)


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _launcher_gone() -> bool:
    """The parent is init or a reaper: the launcher that forked this process has died.

    In a container the launcher itself may be pid 1 (``docker run image torchrun ...``): a pid 1
    running this process's own Python is that launcher, alive."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm") as handle:
            if handle.read().strip() in _REAPERS:
                return True
        return parent == 1 and os.path.realpath("/proc/1/exe") != os.path.realpath("/proc/self/exe")
    except OSError:  # no /proc: only pid 1 tells
        return parent == 1


def _poll_parent(launcher: int) -> None:
    def watch() -> None:
        while os.getppid() == launcher:  # an orphan is re-parented to init or a reaper
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="covid_ddp-launcher-watch", daemon=True).start()


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the launcher's terminal may be gone with it
        pass
