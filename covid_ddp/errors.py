"""The one exception type for mistakes a user can fix.

The command-line entry points catch it and print its message as a single line
(no traceback) before exiting non-zero. Its message says what is wrong and how
to go on.
"""


class UserError(Exception):
    """Bad input, a bad flag or an unreachable resource: something the user can fix."""


class LocalError(UserError):
    """A problem of one machine's own (its GPU count, say) that the others may not share: each
    machine that meets it prints it, where other errors are printed by the main process alone."""
