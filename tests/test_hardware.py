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
    assert hardware.resolve_mixed_precision(config, on_cpu=True).mixed_precision == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_mixed_precision(config, on_cpu=True).mixed_precision == "no"


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    for choice in ("no", "fp16", "bf16"):
        assert hardware.resolve_mixed_precision(TrainConfig(mixed_precision=choice), on_cpu=False).mixed_precision == choice
    assert hardware.resolve_mixed_precision(TrainConfig(mixed_precision="bf16"), on_cpu=True).mixed_precision == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_without_the_flag_a_run_gets_the_devices_best_precision(monkeypatch, native):
    """The default is auto. The accelerate config's bf16/fp16 is a GPU setting: kept on a GPU; on a
    CPU (a GPU config on a laptop) the CPU's own best, since emulated bf16 is slower than fp32 and
    fp16 autocast needs a GPU. Its 'no' is what accelerate launch sets when nobody asked: auto."""
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    best_on_cpu = "bf16" if native else "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert hardware.resolve_mixed_precision(TrainConfig(), on_cpu=True).mixed_precision == best_on_cpu
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert hardware.resolve_mixed_precision(TrainConfig(), on_cpu=True).mixed_precision == best_on_cpu
    for configured in ("bf16", "fp16"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", configured)  # what accelerate launch passes
        assert hardware.resolve_mixed_precision(TrainConfig(), on_cpu=False).mixed_precision == configured
        assert hardware.resolve_mixed_precision(TrainConfig(), on_cpu=True).mixed_precision == best_on_cpu
    assert hardware.resolve_mixed_precision(TrainConfig(mixed_precision="fp16"), on_cpu=True).mixed_precision == (
        best_on_cpu), "fp16 on a CPU, asked for or not, is the CPU's best"
    assert hardware.resolve_mixed_precision(TrainConfig(mixed_precision="no"), on_cpu=True).mixed_precision == "no"


def test_without_the_flag_a_gpu_gets_its_native_half_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for capability, expected in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device, c=capability: c)
        assert hardware.resolve_mixed_precision(TrainConfig(), on_cpu=False).mixed_precision == expected


def test_eval_batch_defaults_per_device_and_process_count():
    config = TrainConfig()
    assert hardware.with_device_defaults(config, torch.device("cpu"), 2).eval_batch_size == 200
    assert hardware.with_device_defaults(config, torch.device("cuda"), 4).eval_batch_size == 4000
    chosen = dataclasses.replace(config, eval_batch_size=30)
    assert hardware.with_device_defaults(chosen, torch.device("cuda"), 4).eval_batch_size == 30


def test_adam_is_fused_only_on_cuda():
    assert hardware.fused_adam(torch.device("cuda")) and not hardware.fused_adam(torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    assert not hardware.make_optimizer(model, 1e-3, torch.device("cpu")).defaults["fused"]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (an earlier in-process run set it up): start from
    a fresh one, and do not leak this test's compile setting to later tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("precision, expected", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_mixed_precision_runs_the_training_convolutions_in_it(small_data, fresh_accelerate_state, precision, expected):
    """A hook on the model that train_one_epoch trains sees its activations' dtype: bf16 autocast
    really ran (and fp32 without it), while the weights themselves stay fp32."""
    from covid_ddp.data import load_data_dir, to_binary
    from covid_ddp.engine import train_one_epoch
    from covid_ddp.splits import split_indices
    from covid_ddp.train import build_accelerator, prepare_run

    config = TrainConfig(mixed_precision=precision, batch_size=40, eval_batch_size=60, log_every=1000)
    accelerator = build_accelerator(config)
    data = load_data_dir(small_data)
    targets = to_binary(data.labels)
    run = prepare_run(config, data, targets, split_indices(targets, 0.3, 0.1), accelerator)
    seen = set()
    model = accelerator.unwrap_model(run.model)
    model.conv3.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    train_one_epoch(run.model, run.optimizer, run.train_loader, accelerator, config, epoch=1)
    assert seen == {expected}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compile_wraps_the_prepared_model_and_the_export_stays_plain(tmp_path, fresh_accelerate_state):
    """--compile hands the model to torch.compile (lazily: nothing compiles until a forward)."""
    from accelerate.utils import DynamoBackend
    from torch._dynamo.eval_frame import OptimizedModule

    from covid_ddp import Net
    from covid_ddp.checkpoint import consolidated_state_dict
    from covid_ddp.train import build_accelerator

    accelerator = build_accelerator(TrainConfig(cpu=True, compile=True, output_dir=str(tmp_path)))
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    model = accelerator.prepare(Net())
    assert isinstance(model, OptimizedModule)
    exported = consolidated_state_dict(accelerator.get_state_dict(model))
    assert exported.keys() == Net().state_dict().keys()
