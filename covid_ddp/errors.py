"""The one exception type for mistakes a user can fix (and a stop signal, told the same way).

The command-line entry points catch it and print its message as a single line
(no traceback) before exiting non-zero. Its message says what is wrong and how
to go on.
"""

import signal


def first_line(error: BaseException, when_empty: str | None = None) -> str:
    """The first line of an error's message, for a one-line report (a library's message can run
    to many lines); ``when_empty`` (default: the error's type name) if it has none."""
    return (str(error).strip().splitlines() or [when_empty or type(error).__name__])[0]


def type_and_first_line(error: BaseException) -> str:
    """'ValueError: the first line', for errors a library raises on a malformed file."""
    return f"{type(error).__name__}: {first_line(error, 'no detail')}"


class UserError(Exception):
    """Bad input, a bad flag or an unreachable resource: something the user can fix."""


class LocalError(UserError):
    """A problem of one machine's own (its GPU count, say) that the others may not share: each
    machine that meets it prints it, where other errors are printed by the main process alone."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: one line, exit 128 + the signal number. Not a failure for the ranks of a
    job to agree on (``distributed``): each got its own signal, or its launcher stops it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; what was written is whole (files are "
                         "written all at once), nothing else was")
        self.exit_code = 128 + signum


# A stop signal the command-line entry point took (``cli.run_cli``). Its handler raises, but Python
# swallows an exception raised while a finalizer runs (a ``__del__``, a weakref callback: "Exception
# ignored in ..."), and the command would then go on and write its outputs as if never stopped. The
# final renames ask here first (``raise_if_stopped``).
_stop_signals: list[int] = []


def note_stop_signal(signum: int) -> None:
    _stop_signals.append(signum)


def forget_stop_signals() -> None:
    _stop_signals.clear()


def raise_if_stopped() -> None:
    """``Interrupted`` if a stop signal came while the command ran, whether or not its error got through."""
    if _stop_signals:
        raise Interrupted(_stop_signals[0])


def first_few(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 7 more``: a long list of keys or files, short enough for a one-line error."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "") or "none"
