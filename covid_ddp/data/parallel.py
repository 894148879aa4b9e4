"""Files decoded over a machine's cores, results in order as they come (``covid-ddp-prepare``,
``covid-ddp-predict``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def in_order(function, values: list, workers: int, progress: str | None = None):
    """``function(value)`` for each of ``values``, yielded in order as each is ready, over ``workers``
    processes (1: in this process). ``progress``: a tqdm bar of that name on stderr."""
    from tqdm import tqdm

    bar = dict(total=len(values), unit="img", desc=progress, disable=progress is None, file=sys.stderr)
    if workers <= 1 or len(values) <= 1:
        yield from map(function, tqdm(values, **bar))
        return
    chunk = max(1, min(64, len(values) // (workers * 8)))
    # multiprocessing's Pool, not concurrent.futures': leaving its block terminates the workers, so
    # Ctrl-C or SIGTERM ends the command at once (ProcessPoolExecutor's shutdown could hang on
    # workers a Ctrl-C had killed). The workers ignore Ctrl-C: the terminal sends it to all of
    # them, and the command's one line says it, not a traceback from each.
    with multiprocessing.Pool(min(workers, len(values)), initializer=_worker_signals) as pool:
        yield from tqdm(pool.imap(function, values, chunksize=chunk), **bar)


def _worker_signals() -> None:
    """A worker ignores Ctrl-C and dies on SIGTERM, as Pool.terminate expects (a forked worker
    inherits the command's handler, which would turn SIGTERM into an error it outlives)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
