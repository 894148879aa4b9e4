"""Hardware-dependent defaults: what --mixed-precision auto, the eval batch and Adam resolve to."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from covid_ddp import hardware
from covid_ddp.config import TrainConfig


def test_auto_precision_on_the_cpu_follows_native_bf16_support(monkeypatch):
    config = TrainConfig(cpu=True, mixed_precision="auto")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve_mixed_precision(config).mixed_precision == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_mixed_precision(config).mixed_precision == "no"


def test_an_explicit_precision_is_kept():
    for choice in (None, "no", "fp16", "bf16"):
        config = TrainConfig(cpu=True, mixed_precision=choice)
        assert hardware.resolve_mixed_precision(config) == config


def test_eval_batch_defaults_per_device_and_process_count():
    config = TrainConfig()
    assert hardware.with_device_defaults(config, torch.device("cpu"), 2).eval_batch_size == 200
    assert hardware.with_device_defaults(config, torch.device("cuda"), 4).eval_batch_size == 4000
    chosen = dataclasses.replace(config, eval_batch_size=30)
    assert hardware.with_device_defaults(chosen, torch.device("cuda"), 4).eval_batch_size == 30


def test_adam_is_fused_only_on_cuda():
    model = torch.nn.Linear(2, 2)
    assert not hardware.make_optimizer(model, 1e-3, torch.device("cpu")).defaults["fused"]
    assert hardware.make_optimizer(model, 1e-3, torch.device("cuda")).defaults["fused"]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (an earlier in-process run set it up): start from
    a fresh one, and do not leak this test's compile setting to later tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_compile_wraps_the_prepared_model_and_the_export_stays_plain(tmp_path, fresh_accelerate_state):
    """--compile hands the model to torch.compile (lazily: nothing compiles until a forward)."""
    from accelerate.utils import DynamoBackend, is_compiled_module

    from covid_ddp import Net
    from covid_ddp.checkpoint import consolidated_state_dict
    from covid_ddp.train import build_accelerator

    accelerator = build_accelerator(TrainConfig(cpu=True, compile=True, output_dir=str(tmp_path)))
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    model = accelerator.prepare(Net())
    assert is_compiled_module(model)
    exported = consolidated_state_dict(accelerator.get_state_dict(model))
    assert exported.keys() == Net().state_dict().keys()
