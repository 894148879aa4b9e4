"""Score trained weights with clinical metrics, intervals and figures:
`python launch/evaluate.py --weights W.pth --data-dir D [--split test|val|all]` (see --help)."""

import sys

from covid_ddp import launcher_watch

launcher_watch.arm("covid-ddp-evaluate")  # first, before torch: see launch/train.py

from covid_ddp.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
