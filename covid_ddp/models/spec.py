"""A model spec: which network, at which input size. Settled once per run (``TrainConfig.model_spec``),
recorded in the weights' sidecar, and read back from it by every command (``ModelSpec.of_sidecar``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.format import IMAGE_SIZE


@dataclass(frozen=True)
class ModelSpec:
    """Which network, at which input size: what a weights file's sidecar records (``model``)."""

    name: str = "net"
    image_size: int = IMAGE_SIZE

    @classmethod
    def of_sidecar(cls, sidecar: dict | None) -> "ModelSpec":
        """The spec a sidecar names; a weights file without one (the original script's, or one written
        before sidecars named the model) is Net at 64."""
        recorded = (sidecar or {}).get("model") or {}
        return cls(str(recorded.get("name", "net")), int(recorded.get("image_size", IMAGE_SIZE)))

    def to_dict(self) -> dict:
        return {"name": self.name, "image_size": self.image_size}

    def describe(self) -> str:
        return f"{self.name} at {self.image_size}x{self.image_size}"
