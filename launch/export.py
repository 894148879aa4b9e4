"""Export trained weights to ONNX: `python launch/export.py --weights W.pth --onnx model.onnx` (see --help)."""

import sys

from covid_ddp.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
