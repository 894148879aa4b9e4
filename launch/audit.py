"""Measure how much trained weights lean on marks, the border and the source hospital:
`python launch/audit.py --weights W.pth [--data-dir D] [--split test|val|all]` (see --help)."""

import sys

from covid_ddp import launcher_watch

launcher_watch.arm("covid-ddp-audit")  # first, before torch: see launch/train.py

from covid_ddp.commands.audit import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
