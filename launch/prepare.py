"""Make a training folder from PNG/JPEG/DICOM chest X-rays: `python launch/prepare.py --output-dir DIR SRC...` (see --help)."""

import sys

from covid_ddp.commands.prepare import main

if __name__ == "__main__":
    sys.exit(main())
