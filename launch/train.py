"""Train the chest X-ray classifier: `accelerate launch launch/train.py [flags]` (see --help)."""

import sys

from covid_ddp.train import main

if __name__ == "__main__":
    sys.exit(main())
