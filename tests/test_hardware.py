"""Hardware-dependent defaults: what --mixed-precision auto, the eval batch and Adam resolve to."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from covid_ddp.errors import UserError
from covid_ddp.training import hardware
from covid_ddp.training.config import TrainConfig


def cpu(native="bf16", host="node1") -> dict:
    return {"host": host, "device": "cpu", "native": native, "runs": ["no", "bf16"]}


def gpu(native="bf16", host="node1", runs=("no", "fp16", "bf16")) -> dict:
    return {"host": host, "device": "cuda", "native": native, "runs": list(runs)}


@pytest.fixture(autouse=True)
def no_accelerate_config(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def test_auto_precision_on_the_cpu_follows_native_bf16_support(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.agree_precision([hardware.local_view(cpu=True)], "auto") == ("bf16", None)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.agree_precision([hardware.local_view(cpu=True)], None) == ("no", None)


def test_a_gpu_view_names_its_native_half_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    for capability, expected in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device, c=capability: c)
        view = hardware.local_view(cpu=False)
        assert view["device"] == "cuda" and view["native"] == expected
        assert hardware.agree_precision([view], None) == (expected, None)
    assert hardware.local_view(cpu=True)["device"] == "cpu", "--cpu: the CPU even with a GPU"


def test_auto_is_the_best_every_process_computes_natively():
    assert hardware.agree_precision([gpu(), gpu(host="node2")], None) == ("bf16", None)
    precision, why = hardware.agree_precision([gpu(), gpu(), gpu("fp16", "node2"), gpu("fp16", "node2")], None)
    assert precision == "fp16", "an A100 and a V100 node: fp16 (with its GradScaler) everywhere"
    assert why == ("--mixed-precision auto: fp16 on every process, the best all of them compute natively "
                   "(processes 0, 1 (on node1) would compute bf16)")
    precision, why = hardware.agree_precision([cpu(), cpu("no", "node2")], "auto")
    assert precision == "no" and "process 0 (on node1) would compute bf16" in why


def test_an_explicit_precision_is_kept_where_every_process_can_run_it(monkeypatch):
    for choice in ("no", "fp16", "bf16"):
        assert hardware.agree_precision([gpu(), gpu("fp16", "node2")], choice) == (choice, None)
    assert hardware.agree_precision([cpu("no")], "bf16") == ("bf16", None), "emulated, but asked for"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch passes from its config
    assert hardware.agree_precision([cpu("no"), cpu("no")], None) == ("bf16", None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # also what it passes when nobody asked: auto
    assert hardware.agree_precision([cpu("no")], None) == ("no", None)
    assert hardware.agree_precision([cpu("no")], "no") == ("no", None)


def test_a_precision_some_process_cannot_run_is_replaced_in_one_line(monkeypatch):
    assert hardware.agree_precision([cpu()], "fp16") == (
        "bf16", "--mixed-precision fp16 cannot run on this CPU; training in bf16 (auto's choice) instead")
    old_gpu = gpu("fp16", "node2", runs=("no", "fp16"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert hardware.agree_precision([gpu(), old_gpu], None) == (
        "fp16", "the accelerate config's mixed_precision bf16 cannot run on process 1 (on node2) (GPU); training "
                "in fp16 (auto's choice) instead")


def test_auto_on_a_resume_keeps_the_runs_precision_where_the_new_hardware_runs_it():
    """A Slurm requeue from A100s onto V100s, or onto another CPU: auto is decided per machine."""
    a100s, v100s = [gpu(), gpu()], [gpu("fp16", runs=("no", "fp16")), gpu("fp16", "node2", runs=("no", "fp16"))]
    assert hardware.agree_precision(v100s, None, recorded="no") == ("no", None), "an fp32 run stays fp32"
    assert hardware.agree_precision(a100s, "auto", recorded="fp16") == ("fp16", None), "not auto's bf16"
    assert hardware.agree_precision(v100s, None, recorded="bf16") == (
        "fp16", "--mixed-precision auto: the resumed run trained in bf16, which processes 0, 1 (on node1, node2) (GPU) "
                "cannot run; it goes on in fp16 (recorded in config.json as a change)")
    assert hardware.agree_precision(v100s, "no", recorded="bf16") == ("no", None), "a flag given is what is asked"


def test_processes_on_gpus_and_on_cpus_are_refused_naming_them():
    hardware.agree_device([gpu(), gpu()])
    hardware.agree_device([cpu(), cpu()])
    with pytest.raises(UserError, match=r"processes 0, 1 \(on node1\) would train on CUDA GPUs but process 2 "
                                        r"\(on node2\) found no usable GPU.*pass --cpu"):
        hardware.agree_device([gpu(), gpu(), cpu(host="node2")])


def test_adam_is_fused_only_on_cuda():
    from covid_ddp.training import recipe
    from covid_ddp.training.config import TrainConfig

    assert recipe.fused(torch.device("cuda")) and not recipe.fused(torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    for optimizer in ("adam", "adamw"):
        built = recipe.make_optimizer(model, TrainConfig(optimizer=optimizer), torch.device("cpu"))
        assert not built.defaults["fused"] and type(built).__name__.lower() == optimizer


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
    from covid_ddp.data.folders import load_data_dir
    from covid_ddp.data.format import to_binary
    from covid_ddp.data.splits import split_indices
    from covid_ddp.training.engine import train_one_epoch
    from covid_ddp.training.preparation import prepare_run
    from covid_ddp.training.session import build_accelerator

    config = TrainConfig(mixed_precision=precision, batch_size=40, eval_batch_size=60, log_every=1000)
    accelerator = build_accelerator(config)
    data = load_data_dir(small_data)
    targets = to_binary(data.labels)
    config = dataclasses.replace(config, image_size=data.image_size)
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
    from covid_ddp.models.weights import consolidated_state_dict
    from covid_ddp.training.session import build_accelerator

    accelerator = build_accelerator(TrainConfig(cpu=True, compile=True, output_dir=str(tmp_path)))
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    model = accelerator.prepare(Net())
    assert isinstance(model, OptimizedModule)
    exported = consolidated_state_dict(accelerator.get_state_dict(model))
    assert exported.keys() == Net().state_dict().keys()


def test_the_launchers_no_is_explained_where_another_precision_runs(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert "training in bf16; --mixed-precision no trains in fp32" in hardware.launcher_precision_note(None, "bf16")
    assert hardware.launcher_precision_note(None, "no") is None, "the same: nothing to explain"
    assert hardware.launcher_precision_note("bf16", "bf16") is None, "a flag given is what runs"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert hardware.launcher_precision_note(None, "bf16") is None, "no launcher said anything"
