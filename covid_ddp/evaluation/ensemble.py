"""Several runs' weights scored as one model: the mean of their P(COVID).

    covid-ddp-evaluate --weights runs/s1/COVID_binary_classifier.pth --weights runs/s2/COVID_binary_classifier.pth
    covid-ddp-predict  --weights ... --weights ... xray.png

Seeds of one recipe differ by 0.01-0.07 ROC AUC on a held-out source (docs/real-cxr.md); the mean
of their probabilities is a model of its own. Its threshold is chosen, like a run's, on the
validation split, with the ensemble's own scores, so every run must have split the same data
the same way (the same data files, the same rows in their ``splits.npz``): runs of one recipe
over seeds do. Other runs are refused in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.format import RawData, to_binary
from ..errors import UserError
from ..metrics import DEFAULT_THRESHOLD, choose_threshold
from ..models.inference import predict
from ..models.loading import inference_model, load_model
from ..run_files import CONFIG_FILE, SPLITS_FILE
from ..training import checkpoint as ckpt


@dataclass
class Ensemble:
    """The weights files and their models (as loaded, for Grad-CAM; folded copies score)."""

    paths: list[Path]
    models: list[torch.nn.Module]
    scorers: list[torch.nn.Module] = field(init=False)

    def __post_init__(self):
        self.scorers = [inference_model(model) for model in self.models]  # folded once, as covid-ddp-predict scores
        sizes = {model.spec.image_size for model in self.models}
        if len(sizes) > 1:
            listed = ", ".join(f"{path} {model.spec.describe()}" for path, model in zip(self.paths, self.models))
            raise UserError(f"--weights: the models read images of different sizes ({listed}); an ensemble scores "
                            "the same images with each")

    @property
    def image_size(self) -> int:
        return self.models[0].spec.image_size

    @classmethod
    def load(cls, paths: list[str | Path], device: torch.device | str = "cpu") -> "Ensemble":
        paths = [Path(path) for path in paths]
        if len({path.resolve() for path in paths}) < len(paths):
            raise UserError("--weights: the same file is given twice; an ensemble averages different runs")
        return cls(paths, [load_model(path, device) for path in paths])

    def __len__(self) -> int:
        return len(self.models)

    def predict(self, images, batch_size: int | None = None, rows=None) -> np.ndarray:
        """The mean P(COVID) of the members, for ``images`` (or ``images[rows]``: see ``predict``)."""
        scores = [predict(scorer, images, batch_size, rows) for scorer in self.scorers]
        return np.mean(scores, axis=0)


def common_split(paths: list[Path]) -> dict:
    """The split every run used (train/val/test rows), or a one-line refusal naming the run that differs."""
    first, reference = None, None
    for path in paths:
        run_dir = path.parent
        splits, config = run_dir / SPLITS_FILE, run_dir / CONFIG_FILE
        if not splits.is_file() or not config.is_file():
            raise UserError(f"{path}: its run folder ({SPLITS_FILE}, {CONFIG_FILE}) is not beside it, and an "
                            "ensemble's split and threshold come from its runs' folders; for weights without them "
                            "pass --threshold (and --split all to covid-ddp-evaluate)")
        rows = ckpt.read_splits(splits)
        files = _data_files(config)
        if reference is None:
            first, reference = path, (rows, files)
            continue
        same_rows = all(np.array_equal(rows.get(part), reference[0].get(part)) for part in ("train", "val", "test"))
        if not same_rows or files != reference[1]:
            what = "other data files" if files != reference[1] else "another split"
            raise UserError(f"{path} was trained on {what} than {first}: an ensemble needs runs of one split (the "
                            "same data and split flags, any seed)")
    return reference[0]


def _data_files(config_path: Path) -> str | None:
    """What identifies the run's data: the files' sha256, or the synthetic set's settings."""
    try:
        return json.loads(config_path.read_text()).get("data", {}).get("fingerprint")
    except ValueError as error:
        raise UserError(f"{config_path}: not a covid_ddp run configuration ({error})")


def ensemble_threshold(ensemble: Ensemble, run_data: Callable[[], RawData], split: dict | None = None
                       ) -> tuple[float, str]:
    """(threshold, where it came from): chosen on the runs' common validation split with the
    ensemble's scores, as each run chose its own (Youden's J, or its --target-sensitivity).
    ``run_data()``: the set the runs trained on (read only if there is a validation split;
    ``run_data.load_evaluation_data``), and ``split``: their ``common_split``, when the caller has it."""
    val_rows = (split or common_split(ensemble.paths))["val"]
    if not len(val_rows):
        return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (the runs have no validation split)"
    data = run_data()
    target_sensitivity = _recorded(ensemble.paths[0], "target_sensitivity")
    chosen = choose_threshold(ensemble.predict(data.images, rows=val_rows), to_binary(data.labels)[val_rows],
                              target_sensitivity)
    return chosen["threshold"], (f"{chosen['method']} on the {len(ensemble)} runs' common validation split "
                                 f"({len(val_rows)} images)")


def _recorded(weights: Path, flag: str):
    config = json.loads((weights.parent / CONFIG_FILE).read_text())
    return config.get("config", {}).get(flag)
