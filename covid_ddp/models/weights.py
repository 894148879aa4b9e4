"""A weights file and its sidecar JSON: written by training, read by every command.

The file is a plain state_dict (the original script's format), read with ``weights_only=True``;
the sidecar (``COVID_binary_classifier.json``) names the network, its image size and the decision
threshold. ``load_model`` builds the model a file holds; a file without a sidecar is the seed's Net.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from ..bounds import IMAGE_SIZE, IMAGE_SIZES, PROBABILITY
from ..errors import UserError, first_few, first_line
from ..files import write_json
from .backbones import MODEL_NAMES, check_model_name
from .net import ModelSpec, build_network, for_inference, original_state_dict

WEIGHTS_FILE = "COVID_binary_classifier.pth"  # the original script's name, in every run folder
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


def load_plain(path: Path, kind: str, map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain containers only. A file that holds
    anything else (a pickled object could run code when read) is a one-line error, not read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise _unloadable(path, kind, error) from None


def _unloadable(path: Path, kind: str, error: Exception) -> UserError:
    """Why ``torch.load(weights_only=True)`` could not read ``path``, in the user's terms."""
    # A class weights_only refuses ("Unsupported global" / "class"; torch would advise weights_only=False),
    # not a damaged file ("Unsupported operand").
    if isinstance(error, pickle.UnpicklingError) and re.search(r"unsupported (global|class)", str(error), re.I):
        return UserError(f"{path}: refused: this {kind} holds pickled Python objects besides tensors, which could "
                         "run code when read; save plain tensors (a state_dict) instead")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6 (or with _use_new_zipfile_serialization=False)
    # a pickle stream, which starts with the protocol opcode. Anything else is a text file, a picture...
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return UserError(f"{path}: not a PyTorch {kind} (torch.save writes a zip archive and this file is not one)")
    damaged = "damaged: " if isinstance(error, pickle.UnpicklingError) else ""
    return UserError(f"{path}: not a loadable {kind} ({damaged}{first_line(error)})")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of the weights file ``path`` in eval mode (loaded with ``weights_only=True``, strict):
    the network and size its sidecar names (``model.spec``); without a sidecar, the seed's Net at
    64x64, as written by covid_ddp (any version) or by the original script. Raw 0-255 pixels in."""
    path = Path(path)
    state_dict = load_weights(path)
    spec = model_spec(path)
    if isinstance(state_dict, dict) and spec.name == "net":
        try:
            state_dict = original_state_dict(state_dict)
        except ValueError as error:
            raise UserError(f"{path}: {error}") from None
    model = build_network(spec)
    named = f"{spec.describe()}, as {sidecar_path(path).name} names" if read_sidecar(path) else \
        f"the original script's Net (no {sidecar_path(path).name} beside it names another model)"
    missing, unexpected = _key_mismatch(model, state_dict)
    if missing or unexpected:
        raise UserError(f"{path}: not weights of {named} (missing keys: {first_few(missing, 5)}; unexpected keys: "
                        f"{first_few(unexpected, 5)})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not fit {named} ({str(error).splitlines()[-1].strip()})")
    return model.to(device).eval()


def model_spec(weights: Path) -> ModelSpec:
    """The network and image size of a weights file, from its sidecar (Net at 64 without one)."""
    return ModelSpec.of_sidecar(read_sidecar(weights))


inference_model = for_inference  # the folded, channels_last copy that scores


def _key_mismatch(model: torch.nn.Module, state_dict) -> tuple[list[str], list[str]]:
    if not isinstance(state_dict, dict):
        return ["(the file holds no state_dict)"], []
    expected, found = set(model.state_dict()), set(state_dict)
    return sorted(expected - found), sorted(found - expected)


def decision_threshold(chosen: float | None, weights: Path) -> tuple[float, str]:
    """(threshold, where it came from): --threshold, else the sidecar beside the weights, else 0.5."""
    if chosen is not None:
        PROBABILITY.check(chosen, "--threshold")
        return chosen, "--threshold"
    stored = read_sidecar(weights)
    if stored is None:
        return 0.5, f"default 0.5 (no {sidecar_path(weights).name} beside the weights)"
    method = stored.get("method", "stored")
    chosen_on = " on the validation split" if stored.get("chosen_on") == "validation" else ""
    return stored["threshold"], f"{method}{chosen_on}, from {sidecar_path(weights).name}"
