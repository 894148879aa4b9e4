"""The data a run trained on and its parts, read from its ``splits.npz`` (the data checked against
its ``config.json``): a held-out image stays held out for every command that scores the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.folders import as_folders, load_data_dirs
from ..data.format import MCFAM_BASE_URL, fingerprint, to_binary
from ..data.sets import load_dataset
from ..data.splits import make_split, split_groups
from ..errors import UserError, first_line
from ..models.loading import model_spec
from ..run_files import CONFIG_FILE, SPLITS_FILE
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig


def load_evaluation_data(data_dir: list[str] | None, weights: Path):
    """``--data-dir``, or else the set the weights' run trained on (regenerated when synthetic); its
    images of the size the weights read."""
    image_size = model_spec(weights).image_size
    if data_dir is not None:
        return load_data_dirs(as_folders(data_dir), image_size)
    recorded = _run_config(weights, "without --data-dir")
    config, provenance = _train_config(recorded, weights.parent / CONFIG_FILE), recorded.get("data", {})
    if config.dataset == "synthetic":
        return load_dataset("synthetic", None, config.synthetic_size, config.seed, MCFAM_BASE_URL,
                            image_size=image_size)
    folders = provenance.get("data_dirs") or ([provenance["data_dir"]] if provenance.get("data_dir") else None)
    if not isinstance(provenance, dict) or not folders or not all(isinstance(f, str) for f in folders):
        raise UserError(f"{weights.parent / CONFIG_FILE} records no data folder; pass --data-dir")
    return load_data_dirs(as_folders(folders), image_size)


def _run_config(weights: Path, purpose: str) -> dict:
    """The config.json of the run folder ``weights`` sits in; a missing or damaged one is a user error."""
    config_path = weights.parent / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{purpose} the run's {CONFIG_FILE} must sit beside {weights.name}; for weights "
                        "without their run folder pass --data-dir and use --split all")
    try:
        recorded = json.loads(config_path.read_text())
        if not isinstance(recorded["config"], dict) or "seed" not in recorded["config"]:
            raise KeyError("config.seed")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{config_path}: not a covid_ddp run configuration ({error}); pass --data-dir and use "
                        "--split all")
    return recorded


def _train_config(recorded: dict, config_path: Path) -> TrainConfig:
    """The run's TrainConfig from its config.json, checked as a command line is: a hand edit that
    no command line could have made ("val_size": "a", "seed": null) is one line naming the file."""
    fields = {k: v for k, v in recorded["config"].items() if k in TrainConfig.__dataclass_fields__}
    try:
        config = TrainConfig(**fields)
        config.validate()
        if not isinstance(config.seed, int):  # (None passes the bounds: an unset option)
            raise UserError(f"--seed must be an integer, got {config.seed!r}")
    except (UserError, TypeError, ValueError, AttributeError) as error:  # a value of another type
        raise UserError(f"{config_path}: not as covid-ddp-train wrote it ({first_line(error)}); restore the run's "
                        "file, or pass --data-dir and use --split all") from None
    return config


def bootstrap_seed(weights: Path) -> int:
    """The seed a run's own intervals were drawn with (its --seed, as training drew them), so that
    the same weights on the same images get the same intervals from every command; 0 for weights
    without a run folder."""
    try:
        seed = json.loads((weights.parent / CONFIG_FILE).read_text())["config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def rows_to_score(split: str, weights: Path, data) -> np.ndarray:
    """All rows, or the run's own test/validation rows: those its ``splits.npz`` records (once the
    data is checked to be the run's), so that no library upgrade can move an image between parts.
    A run folder without one (weights copied with their config.json only) has its split rebuilt."""
    if split == "all":
        return np.arange(len(data.images))
    run_dir, config_path = weights.parent, weights.parent / CONFIG_FILE
    recorded = _run_config(weights, f"to find --split {split},")
    config = _train_config(recorded, config_path)
    _check_same_data(recorded.get("data", {}), data, config_path)
    saved_path = run_dir / SPLITS_FILE
    if saved_path.is_file():
        rows = _saved_rows(saved_path, split, len(data.images))
    else:
        rebuilt = make_split(to_binary(data.labels), config.split_plan(), data.meta, split_groups(data))
        rows = rebuilt.test if split == "test" else rebuilt.val
    if not len(rows):
        raise UserError(f"the run has no {split} part (--val-size 0?); choose another --split")
    return rows


def _saved_rows(path: Path, split: str, count: int) -> np.ndarray:
    """The rows of ``split`` in a run's splits.npz: whole numbers naming images of the set."""
    rows = ckpt.read_splits(path).get(split)
    if rows is None or rows.dtype.kind not in "iu" or rows.ndim != 1 or (len(rows) and not 0 <= rows.min() <= rows.max() < count):
        raise UserError(f"{path}: no '{split}' rows among the {count} images; restore the run's file, or use --split all")
    return rows.astype(np.int64)


def _check_same_data(recorded: dict, data, config_path: Path) -> None:
    """The data is the run's: the same files in the same order, or the same synthetic set."""
    recorded_files = recorded.get("files", {})
    found_files = data.provenance.get("files", {})  # (none: the synthetic set, regenerated from the config)
    # Other folders, more or fewer, or the same in another order (rows follow the folder order).
    if recorded_files and list(recorded_files) != list(found_files):
        raise UserError(f"the run trained on {_folders(recorded_files)} ({config_path}), not {_folders(found_files)}: "
                        "its split would pick other images; pass the run's --data-dir folders in its order, or "
                        "use --split all")
    for name, entry in recorded_files.items():
        found = found_files.get(name, {}).get("sha256")
        if found is not None and entry.get("sha256") not in (None, found):
            raise UserError(f"{name} is not the file the run trained on ({config_path} records sha256 "
                            f"{entry['sha256'][:12]}..., this one is {found[:12]}...): its split would "
                            "pick other images; use --split all")
    if not recorded_files and recorded.get("fingerprint") not in (None, fingerprint(data)):
        raise UserError(f"the data is not the set the run trained on ({config_path} records {recorded['fingerprint']}): "
                        "its split would pick other images; use --split all")


def _folders(files: dict) -> str:
    """'folders a, b' from the recorded file keys ('<folder>/<file>'), or 'one folder'."""
    names = list(dict.fromkeys(name.split("/")[0] for name in files if "/" in name))
    return f"the folders {', '.join(names)}" if names else "one folder"
