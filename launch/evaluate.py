"""Score trained weights with clinical metrics, intervals and figures:
`python launch/evaluate.py --weights W.pth --data-dir D [--split test|val|all]` (see --help)."""

import sys

from covid_ddp.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
