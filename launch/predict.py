"""Score chest X-rays: `python launch/predict.py --weights W.pth INPUT...` (see --help)."""

import sys

from covid_ddp.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
