"""The model a weights file holds: ``load_model(path)``, in eval mode, for raw 0-255 pixels.

The network and its size come from the sidecar (``weights.read_sidecar``); a file without one is
the seed's Net at 64x64, as the original script and every covid_ddp version wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError, first_few
from ..files import SAFETENSORS_SUFFIX, safetensors_metadata
from .net import build_network, for_inference, original_state_dict
from .spec import ModelSpec
from .weights import load_weights, read_sidecar, sidecar_path


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
    """The network and image size of a weights file, from its sidecar; for a .safetensors file
    without one, from its header (covid-ddp-train writes it there too); else Net at 64."""
    sidecar = read_sidecar(weights)
    if sidecar is None and Path(weights).suffix == SAFETENSORS_SUFFIX and Path(weights).is_file():
        recorded = _header_model(Path(weights))
        if recorded is not None:
            return ModelSpec.of_sidecar({"model": recorded})
    return ModelSpec.of_sidecar(sidecar)


def _header_model(path: Path) -> dict | None:
    try:
        recorded = json.loads(safetensors_metadata(path).get("covid_ddp_model") or "null")
    except Exception:  # noqa: BLE001  (a header that cannot be read: load_weights names the file)
        return None
    return recorded if isinstance(recorded, dict) and recorded else None


inference_model = for_inference  # the folded, channels_last copy that scores


def _key_mismatch(model: torch.nn.Module, state_dict) -> tuple[list[str], list[str]]:
    if not isinstance(state_dict, dict):
        return ["(the file holds no state_dict)"], []
    expected, found = set(model.state_dict()), set(state_dict)
    return sorted(expected - found), sorted(found - expected)
