"""covid-ddp-prepare: folders of chest X-rays (PNG, JPEG, DICOM) -> a training folder (``data.prepare``).

    covid-ddp-prepare --output-dir data/mine hospital_a/ cases.csv
    covid-ddp-train --data-dir data/mine --group-split
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bounds import IMAGE_SIZES, POSITIVE_INT
from ..cli import ArgumentParser, HelpFormatter, run_cli, say
from ..data.confounding import single_source_warning
from ..data.format import IMAGE_SIZE
from ..data.parallel import usable_cores
from ..data.prepare import (PrepareOptions, check_output_folder_free, collect_items, describe_inputs, parse_label_map,
                            prepare)
from ..destinations import refuse_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="covid-ddp-prepare", formatter_class=HelpFormatter,
        description="Make a covid_ddp training folder (train_images64.npz, train_labels.npz, meta.npz) from "
                    "chest X-ray images: PNG, JPEG or DICOM, in class folders or listed in a CSV, at 64x64 or "
                    "--image-size. Not for clinical use.")
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="a folder with one subfolder per class (normal, pneumonia, covid, or 0-3), or a CSV "
                             "with columns path, label and optional patient_id, view, source (paths relative to "
                             "the CSV)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="the training folder to write (new or empty)")
    parser.add_argument("--label-map", metavar="NAME=INDEX,...",
                        help="more class names: 0 normal, 1 other non-COVID, 2 COVID, 3 COVID in the AP view "
                             "(e.g. 'healthy=0,viral=1,sars-cov-2=2')")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="drop the later copy of every exact or near duplicate (both, where their labels "
                             "disagree); by default they are only reported")
    parser.add_argument("--skip-errors", action="store_true",
                        help="report each unreadable file and prepare the rest (default: stop, naming the first)")
    parser.add_argument("--workers", type=POSITIVE_INT.parse, default=usable_cores(), metavar="N",
                        help="decoding processes (default: this machine's cores)")
    parser.add_argument("--image-size", type=IMAGE_SIZES.parse, default=IMAGE_SIZE, metavar="S",
                        help="side of the square images written (train_images<S>...): 64 is the seed's and MCFAM's, "
                             f"224 the usual backbones' ({IMAGE_SIZES.describe()}; default: 64)")
    parser.add_argument("--format", default="auto", choices=["npz", "store", "auto"],
                        help="the images as compressed train_images<S>.npz, or as the uncompressed store "
                             "train_images<S>.npy that training maps read-only (a machine's processes then share "
                             "one copy); auto: the store when the images take over 1 GiB")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output-dir that covid-ddp-prepare wrote (no other folder)")
    parser.add_argument("--allow-outside", action="store_true",
                        help="let a CSV name files outside its own folder (absolute paths, '..'); by default such "
                             "a path is refused, so that a list from elsewhere reaches only the files beside it")
    return parser


def run(arguments: argparse.Namespace) -> None:
    output_dir = Path(arguments.output_dir).resolve()
    refuse_inputs(output_dir, "--output-dir", arguments.sources)
    check_output_folder_free(output_dir, arguments.overwrite)
    names = parse_label_map(arguments.label_map)
    items = collect_items(arguments.sources, arguments.allow_outside)
    options = PrepareOptions(arguments.workers, arguments.skip_errors, arguments.drop_duplicates, arguments.image_size,
                             arguments.format, arguments.overwrite, progress=sys.stderr.isatty())
    report = prepare(items, names, Path(arguments.output_dir), options, describe_inputs(arguments.sources))
    per_class = ", ".join(f"class {c}: {n}" for c, n in report["per_class"].items())
    print(f"covid-ddp-prepare: {report['images']} images ({per_class}) from {len(report['per_dataset'])} source(s) "
          f"-> {Path(arguments.output_dir) / report['images_file']} at {arguments.image_size}x"
          f"{arguments.image_size} ({report['images_per_s']:.0f} images/s over {arguments.workers} worker(s))")
    one_source = single_source_warning(report["per_dataset"])
    if one_source:
        say(f"covid-ddp-prepare: warning: {one_source}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)), prog="covid-ddp-prepare")


if __name__ == "__main__":  # python -m covid_ddp.commands.prepare
    raise SystemExit(main())
