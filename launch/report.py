"""Leave-one-source-out results over seeds: `python launch/report.py --data-dir DIR... --output-dir OUT` (see --help)."""

import sys

from covid_ddp.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
