"""A model spec: which network, at which input size and pixel scale. Settled once per run
(``TrainConfig.model_spec``), recorded in the weights' sidecar, and read back from it by every
command (``ModelSpec.of_sidecar``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.format import IMAGE_SIZE


# What a backbone's first layer sees: raw 0-255 pixels less a mean, over a std. 'data': the
# training split's mean and std (found at the start of a run). 'xrv': torchxrayvision's scale,
# [-1024, 1024] (2 * p / 255 - 1) * 1024, which its chest X-ray weights were trained on.
DATA_SCALE = "data"
FIXED_SCALES = {"xrv": (127.5, 255 / 2048)}
INPUT_SCALES = (DATA_SCALE, *FIXED_SCALES)


@dataclass(frozen=True)
class ModelSpec:
    """Which network, at which input size and pixel scale: what a weights file's sidecar records
    (``model``). The scale's mean and std are buffers of the weights themselves, so every command
    applies it by loading them; the spec names it."""

    name: str = "net"
    image_size: int = IMAGE_SIZE
    input_scale: str = DATA_SCALE

    @classmethod
    def of_sidecar(cls, sidecar: dict | None) -> "ModelSpec":
        """The spec a sidecar names; a weights file without one (the original script's, or one written
        before sidecars named the model) is Net at 64."""
        recorded = (sidecar or {}).get("model") or {}
        return cls(str(recorded.get("name", "net")), int(recorded.get("image_size", IMAGE_SIZE)),
                   str(recorded.get("input_scale", DATA_SCALE)))

    def to_dict(self) -> dict:
        scale = {} if self.input_scale == DATA_SCALE else {"input_scale": self.input_scale}  # (as before scales)
        return {"name": self.name, "image_size": self.image_size, **scale}

    def describe(self) -> str:
        scale = "" if self.input_scale == DATA_SCALE else f", pixels at the {self.input_scale} scale"
        return f"{self.name} at {self.image_size}x{self.image_size}{scale}"

    def fixed_normalization(self) -> tuple[float, float] | None:
        """The (mean, std) the input scale fixes; None: the training split's."""
        return FIXED_SCALES.get(self.input_scale)
