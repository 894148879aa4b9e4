"""Export trained weights to ONNX, for inference without PyTorch (ONNX Runtime, TensorRT, ...).

    pip install "covid_ddp[export]"
    covid-ddp-export --weights runs/demo/COVID_binary_classifier.pth --onnx covid.onnx

The graph takes raw 0-255 pixels, float32 of shape (batch, 1, S, S) with a dynamic batch
axis (S: the size the weights were trained at, 64 for the seed's Net), and returns
P(non-COVID), P(COVID) per image: the softmax and the normalisation are inside; Net's BatchNorm
is folded into its convolutions (and the training split's normalisation already is, into
conv1, in the weights file). Weights written by the original script export the same way. The decision threshold stays
outside (in the weights' sidecar JSON), since a deployment may choose its own operating point.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_path
from ..models.net import for_inference

INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
OPSET = 18


class ProbabilityModel(torch.nn.Module):
    """A covid_ddp model returning probabilities instead of log-probabilities."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels).exp()


def export_onnx(model: torch.nn.Module, destination: Path) -> Path:
    """Write ``model`` (eval mode; Net's BatchNorm folded) as an ONNX graph with a dynamic batch axis,
    for images of the model's size (``model.spec.image_size``)."""
    require_exporter()
    wrapped = ProbabilityModel(for_inference(model.cpu().float().eval())).eval()
    size = model.spec.image_size
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(Path(destination)) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about opset versions; failures still raise
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"pixels": {0: batch}},
                                    opset_version=OPSET, verbose=False)
        program.save(str(tmp))
    return Path(destination)


def require_exporter() -> None:
    """torch's exporter needs both; say so in one line before it fails with a traceback."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install \"covid_ddp[export]\"")


def is_exported_model(path: Path) -> bool:
    """An ONNX graph covid-ddp-export wrote: one input and one output, named as it names them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input] == [INPUT_NAME] and [o.name for o in graph.output] == [OUTPUT_NAME]
