"""covid-ddp-export: the ONNX graph scores like PyTorch (runs when the `export` extra is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from original_net import Net as OriginalNet
from original_net import trained_like

from covid_ddp import load_model, predict
from covid_ddp.commands.export import main as export_main

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Weights as the original script writes them (covid_ddp's own have the same keys)."""
    path = tmp_path_factory.mktemp("export") / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    return path


def test_onnx_probabilities_equal_pytorch_for_any_batch_size(weights, tmp_path, capsys):
    assert export_main(["--weights", str(weights), "--onnx", str(tmp_path / "covid.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "covid.onnx"), providers=["CPUExecutionProvider"])
    reference_model = load_model(weights)
    for batch in (1, 7):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 1, 64, 64)).astype(np.float32)
        (probabilities,) = session.run(None, {"pixels": pixels})
        assert probabilities.shape == (batch, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # softmax inside the graph
        np.testing.assert_allclose(probabilities[:, 1], predict(reference_model, pixels), atol=1e-5)


def test_a_wrong_output_name_is_refused_in_one_line(weights, tmp_path, capsys):
    assert export_main(["--weights", str(weights), "--onnx", str(tmp_path / "covid.pth")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "ending in .onnx" in error
    assert not list(tmp_path.iterdir()), "nothing written"
