"""What every command-line entry point shares: user mistakes become one line and exit code 2.

In a multi-process job only the main process (global rank 0) prints that line (a
``LocalError``, one machine's own problem, is printed once by every machine that has it). Every
other rank raises the same error at the same point, because errors after the process
group forms are agreed on by all ranks (``training.distributed.on_main_process`` and friends) and
the ones before it come from the same flags and files; N copies of the line would only
bury it. Under torchrun the main process also writes the launcher's error file and leaves
first (the others wait a second), so the launcher's failure summary names rank 0 and the
problem as the root cause, not a rank that merely stopped with it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from typing import Callable

from .errors import Interrupted, LocalError, UserError, forget_stop_signals, note_stop_signal

USER_ERROR_EXIT = 2
LAUNCHER_GRACE_S = 1.0  # how long the other ranks let the main process be first to fail


def run_cli(command: Callable[[], object], prog: str) -> int:
    """Run ``command``; a ``UserError`` prints ``prog: error: <message>`` (argparse's style), no traceback.
    Ctrl-C and SIGTERM are such errors (training's loop replaces both with its graceful stop,
    ``training.interrupt.GracefulStop``)."""
    forget_stop_signals()  # (those of an earlier command run in this process)
    try:
        with _signals_as_errors():
            try:
                command()
            except KeyboardInterrupt:
                raise Interrupted(signal.SIGINT) from None
    except UserError as error:
        if is_main_rank():
            say(f"{prog}: error: {error}")
            _tell_the_launcher(f"{prog}: {error}")
        elif isinstance(error, LocalError) and os.environ.get("LOCAL_RANK") == "0":  # once per machine
            say(f"{prog}: error: on {socket.gethostname()}: {error}")
        elif "TORCHELASTIC_RUN_ID" in os.environ:
            # Leave first: the launcher's summary names the first process it sees fail.
            time.sleep(LAUNCHER_GRACE_S)
        return getattr(error, "exit_code", USER_ERROR_EXIT)  # 128 + signal for an interrupted run
    return 0


@contextlib.contextmanager
def _signals_as_errors():
    """SIGTERM raises ``Interrupted`` while the command runs (finally blocks then remove temporary
    files), Ctrl-C ``KeyboardInterrupt`` as always; both are noted for ``raise_if_stopped``. From the
    main thread only, where Python allows handlers."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    def terminate(signum, frame):
        note_stop_signal(signum)
        raise Interrupted(signum)

    def ctrl_c(signum, frame):
        note_stop_signal(signum)
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where Ctrl-C is ignored)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def is_main_rank() -> bool:
    """Global rank 0, or no launcher at all (read from the environment: valid before the group forms)."""
    return os.environ.get("RANK", "0") == "0"


def say(line: str) -> None:
    """One line on stderr; a closed terminal (the launcher is gone) is not worth a traceback."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _tell_the_launcher(message: str) -> None:
    """torchrun's summary shows the error file of the earliest failure as its root cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                            "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as handle:
            json.dump(record, handle)
    except OSError:
        pass


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every command: no abbreviated flags (``--epoch 3`` would otherwise pass for
    ``--epochs 3``, and a typo must not set another flag), and its errors a ``UserError``, so that
    ``run_cli`` prints them in one line (the main process alone) instead of the whole usage."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        try:
            arguments, extras = self.parse_known_args(args, namespace)
        except UserError:
            # A mistyped --weights also leaves --weights missing: the typo is the line worth showing.
            typos = [arg for arg in args[: args.index("--") if "--" in args else len(args)]
                     if arg.startswith("--") and arg.split("=", 1)[0] not in self._option_string_actions]
            if typos:
                self.error(self._unrecognized(typos))
            raise
        if extras:
            self.error(self._unrecognized(extras))
        return arguments

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    def _unrecognized(self, extras: list[str]) -> str:
        """'unrecognized argument --epoch; did you mean --epochs?'. The values after an unknown
        flag are left out: they are most likely its own, and naming them would only confuse."""
        flags = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")] or extras
        known = list(self._option_string_actions)
        close = {flag: match[0] for flag in flags if (match := difflib.get_close_matches(flag, known, n=1))}
        text = f"unrecognized argument{'s' if len(flags) > 1 else ''} {', '.join(flags)}"
        if len(flags) == 1 and close:
            return f"{text}; did you mean {close[flags[0]]}?"
        if close:
            return f"{text}; did you mean " + ", ".join(f"{match} (for {flag})" for flag, match in close.items()) + "?"
        return text


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout with the default said once: appended only where the help text does not
    already say it (and not for flags and unset options), numbers as written (300, not 300.0);
    lines break between words only, so URLs and --flag-names stay whole."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or action.required or default in (None, False, argparse.SUPPRESS) or \
                action.option_strings == [] or isinstance(default, bool):
            return text
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


WEIGHTS_HELP = ("a COVID_binary_classifier.pth written by covid-ddp-train, or by the original script (the same "
                "format)")
