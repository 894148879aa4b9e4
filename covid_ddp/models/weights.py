"""A weights file and its sidecar JSON: written by training, read by every command.

The file is a plain state_dict (the original script's format), read with ``weights_only=True``;
the sidecar (``COVID_binary_classifier.json``) names the network, its image size and the decision
threshold. ``load_model`` builds the model a file holds; a file without a sidecar is the seed's Net.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..bounds import IMAGE_SIZES, PROBABILITY
from ..data.format import IMAGE_SIZE
from ..errors import UserError, first_line
from ..files import load_plain, write_json
from ..metrics import DEFAULT_THRESHOLD
from ..run_files import WEIGHTS_FILE
from .backbones import MODEL_NAMES, check_model_name

TRAINING_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # what DDP and torch.compile add to the keys


def sidecar_path(weights: Path | str) -> Path:
    """The sidecar JSON beside a weights file: the state_dict stays plain, and this says how to use
    it: the decision threshold (and how it was chosen), the network and image size, the epoch."""
    return Path(weights).with_suffix(".json")


def write_sidecar(weights: Path, decision: dict) -> None:
    write_json(sidecar_path(weights), decision)


def read_sidecar(weights: Path) -> dict | None:
    """The sidecar of ``weights``, its threshold and model record checked (None without one); a broken
    one is a user error."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a covid_ddp sidecar (not JSON: {first_line(error)}); remove it or pass "
                        "--threshold") from None
    if not isinstance(decision, dict) or "threshold" not in decision:
        raise UserError(f"{path}: not a covid_ddp sidecar (no 'threshold'); remove it or pass --threshold")
    if not PROBABILITY.holds(decision["threshold"]):  # a bool is no threshold: JSON true once read as 1.0
        raise UserError(f"{path}: 'threshold' must be a number between 0 and 1, got {decision['threshold']!r}; fix "
                        "it or pass --threshold")
    _check_model_record(path, decision.get("model"))
    return {**decision, "threshold": float(decision["threshold"])}


def _check_model_record(path: Path, model) -> None:
    """The sidecar's {"name": ..., "image_size": ...} (absent: the seed's Net at 64), as covid-ddp-train wrote it."""
    if model is None:
        return
    if not isinstance(model, dict) or not isinstance(model.get("name", "net"), str) or \
            not IMAGE_SIZES.holds(model.get("image_size", IMAGE_SIZE)) or isinstance(model.get("image_size"), float):
        raise UserError(f"{path}: 'model' must be {{\"name\": ..., \"image_size\": {IMAGE_SIZES.describe()}}}, "
                        f"got {json.dumps(model)[:80]}; the weights' run wrote it: restore that file")
    try:
        check_model_name(model.get("name", "net"))
    except UserError:
        raise UserError(f"{path}: 'model' names '{model['name']}', a network this covid_ddp does not know ("
                        f"{', '.join(MODEL_NAMES)} or timm:NAME); the weights' run wrote it: restore that file, or "
                        "use the covid_ddp version that trained them") from None


def consolidated_state_dict(state_dict: dict) -> dict:
    """Plain keys and fp32 CPU tensors: loads into a fresh model of its kind on any device."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in TRAINING_WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        value = value.detach().to("cpu").contiguous()  # plain NCHW, whatever layout training used
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def load_weights(path: Path, map_location="cpu") -> dict:
    """Read a weights file safely: ``weights_only=True`` refuses pickled code. A run folder given
    in its place is named as such, with the file inside it."""
    path = Path(path)
    if path.is_dir():
        inside = path / WEIGHTS_FILE
        example = f", e.g. {inside}" if inside.is_file() else ""
        raise UserError(f"{path} is a folder, not a weights file; pass the .pth inside it{example}")
    return refuse_non_finite(load_plain(path, "weights file", map_location), path)


def refuse_non_finite(state_dict, path: Path):
    """Weights holding NaN or Inf score every image NaN (called Non-COVID at any threshold): refused
    by every command that reads weights, naming the first tensor that holds them."""
    for key, value in _tensors(state_dict):
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: the weights hold NaN or Inf values (first in '{key}'): they come from a "
                            "run that diverged or a damaged file; use another weights file")
    return state_dict


def _tensors(tree, prefix: str = ""):
    """(key, tensor) of a state_dict, and of the dicts a checkpoint may wrap it in ('state_dict', ...)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))


def decision_threshold(chosen: float | None, weights: Path) -> tuple[float, str]:
    """(threshold, where it came from): --threshold, else the sidecar beside the weights, else 0.5."""
    if chosen is not None:
        PROBABILITY.check(chosen, "--threshold")
        return chosen, "--threshold"
    stored = read_sidecar(weights)
    if stored is None:
        return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no {sidecar_path(weights).name} beside the weights)"
    method = stored.get("method", "stored")
    chosen_on = " on the validation split" if stored.get("chosen_on") == "validation" else ""
    return stored["threshold"], f"{method}{chosen_on}, from {sidecar_path(weights).name}"
