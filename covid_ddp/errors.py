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


def first_few(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 7 more``: a long list of keys or files, short enough for a one-line error."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "") or "none"
