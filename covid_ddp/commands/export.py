"""covid-ddp-export: trained weights to ONNX (``evaluation.export``).

    pip install "covid_ddp[export]"
    covid-ddp-export --weights runs/demo/COVID_binary_classifier.pth --onnx covid.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import WEIGHTS_HELP, ArgumentParser, HelpFormatter, run_cli
from ..destinations import check_output_file, refuse_inputs
from ..errors import UserError
from ..evaluation.export import INPUT_NAME, OUTPUT_NAME, export_onnx, is_exported_model, require_exporter
from ..models.loading import load_model
from ..models.weights import sidecar_path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="covid-ddp-export", description=__doc__.split("\n\n")[0] +
                            " Not for clinical use.", formatter_class=HelpFormatter)
    parser.add_argument("--weights", required=True, metavar="PTH", help=WEIGHTS_HELP)
    parser.add_argument("--onnx", required=True, metavar="PATH", help="where to write the ONNX model (e.g. covid.onnx)")
    return parser


def run(arguments: argparse.Namespace) -> None:
    destination = Path(arguments.onnx)
    if destination.suffix.lower() != ".onnx":
        raise UserError(f"--onnx {destination}: give a file name ending in .onnx")
    require_exporter()
    refuse_inputs(destination, "--onnx", [arguments.weights, sidecar_path(Path(arguments.weights))])
    check_output_file(destination, "--onnx", "an ONNX model covid-ddp-export wrote", is_exported_model)
    model = load_model(arguments.weights)
    export_onnx(model, destination)
    size = model.spec.image_size
    print(f"wrote {destination} ({model.spec.name}; input '{INPUT_NAME}': float32 raw pixels (batch, 1, {size}, {size}); "
          f"output '{OUTPUT_NAME}': P(non-COVID), P(COVID))")


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-export")


if __name__ == "__main__":  # python -m covid_ddp.commands.export
    raise SystemExit(main())
