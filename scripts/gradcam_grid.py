"""Grad-CAM of several models on the same images, one row each: what changed between recipes.

    python scripts/gradcam_grid.py --data-dir ../shared/data/real-cxr --source ieee8023 --label covid \\
        --weights before=runs/report/held-out-ieee8023/default/seed_1/COVID_binary_classifier.pth \\
        --weights after=runs/report/held-out-ieee8023/marks/seed_1/COVID_binary_classifier.pth \\
        --output gradcam-ieee8023.png

Takes the first ``--count`` images of one source and class (meta.npz ``dataset``; labels
0/1 non-COVID, 2/3 COVID), in row order, so every model sees the same ones. The first row is
the images; then, per model, the COVID heatmap over each image, captioned with the model's
name and P(COVID). Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from covid_ddp import gradcam, load_model, predict  # noqa: E402
from covid_ddp.data.folders import as_folders, load_data_dirs  # noqa: E402
from covid_ddp.data.format import to_binary
from covid_ddp.training.board import tile_grid  # noqa: E402


def chosen_rows(data, source: str, label: str, count: int) -> np.ndarray:
    covid = to_binary(data.labels) == 1
    of_source = np.asarray(data.meta["dataset"]).astype(str) == source
    wanted = covid if label == "covid" else ~covid
    return np.flatnonzero(of_source & wanted)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", nargs="+", required=True)
    parser.add_argument("--source", required=True, help="meta.npz 'dataset' value")
    parser.add_argument("--label", choices=["covid", "non-covid"], default="covid")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--weights", action="append", required=True, metavar="NAME=PTH")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    data = load_data_dirs(as_folders(args.data_dir))
    rows = chosen_rows(data, args.source, args.label, args.count)
    if not len(rows):
        raise SystemExit(f"no {args.label} images of source {args.source}")
    images = data.images[rows]
    grids = [tile_grid(images, None, [f"{args.source} row {r}" for r in rows], columns=len(rows))]
    for spec in args.weights:
        name, _, path = spec.partition("=")
        model = load_model(path)
        scores = predict(model, images)
        grids.append(tile_grid(images, gradcam(model, images), [f"{name}\np={p:.2f}" for p in scores],
                               columns=len(rows)))
    Image.fromarray(np.concatenate(grids, axis=1).transpose(1, 2, 0)).save(args.output)
    print(f"wrote {args.output}: {len(rows)} images x {len(args.weights)} model(s)")


if __name__ == "__main__":
    main()
