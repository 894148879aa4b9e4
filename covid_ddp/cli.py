"""What every command-line entry point shares: user mistakes become one line and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable

from .errors import UserError

USER_ERROR_EXIT = 2


def run_cli(command: Callable[[], object], prog: str) -> int:
    """Run ``command``; a ``UserError`` prints ``prog: error: <message>`` (argparse's style), no traceback."""
    try:
        command()
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return getattr(error, "exit_code", USER_ERROR_EXIT)  # 128 + signal for an interrupted run
    return 0
