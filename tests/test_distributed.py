"""Real multi-process runs on CPU (gloo): sharding, exact evaluation, one consolidated output.

Each launcher start costs seconds, so one 2-process training run (a module fixture) serves
several tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import HELPERS, clean_env, free_port, run, small_args, torchrun
from covid_ddp import Net, load_model, predict
from covid_ddp.data import load_data_dir, to_binary
from covid_ddp.splits import split_indices


@pytest.fixture(scope="module")
def two_process_run(small_data, tmp_path_factory):
    """One real 2-process training run; every rank dumps its final weights."""
    folder = tmp_path_factory.mktemp("two_proc")
    result = torchrun(2, HELPERS / "train_and_dump.py", [folder / "dump", *small_args(small_data, folder / "run")])
    return folder, result


@pytest.fixture(scope="module")
def shard_probe(small_data, tmp_path_factory):
    """Both ranks' training rows per epoch and gathered test scores, from one 2-process probe."""
    folder = tmp_path_factory.mktemp("shards")
    torchrun(2, HELPERS / "shard_probe.py", [folder, small_data])
    return tuple(json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1))


def test_shards_are_disjoint_complete_and_reshuffled(shard_probe):
    rank0, rank1 = shard_probe
    train_rows = set(rank0["split_train"])
    for epoch in range(2):
        seen0, seen1 = rank0["train_rows"][epoch], rank1["train_rows"][epoch]
        assert not set(seen0) & set(seen1), "a row was trained on by both ranks"
        assert len(seen0) == len(seen1) == len(set(seen0)), "each rank sees distinct rows, as many as the other"
        # Complete up to the last partial global batch, which training drops (batch 40).
        assert set(seen0) | set(seen1) <= train_rows
        assert len(train_rows) - (len(seen0) + len(seen1)) == len(train_rows) % 40
    assert rank0["train_rows"][0] != rank0["train_rows"][1], "the shard must be reshuffled every epoch"


def test_device_loader_shards_equal_the_dataloader_path(shard_probe):
    """--data-on-device yes|no must not change which images a rank trains on, batch for batch."""
    for rank in shard_probe:
        assert rank["train_rows"] == rank["train_rows_dataloader"]


def test_gathered_evaluation_equals_single_process(shard_probe, small_data):
    rank0, rank1 = shard_probe
    assert rank0["test_rows"] == rank1["test_rows"], "every rank must see the same gathered result"
    assert rank0["test_rows"] == rank0["split_test"], "no duplicated or missing test samples, in order"

    torch.manual_seed(0)
    model = Net().eval()
    model.set_normalization(100.0, 50.0)
    data = load_data_dir(small_data)
    expected = predict(model, data.images[rank0["split_test"]])
    np.testing.assert_allclose(rank0["test_p_covid"], expected, rtol=0, atol=1e-6)


def test_two_processes_write_one_consolidated_run(two_process_run):
    folder, result = two_process_run
    run_dir = folder / "run"
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["COVID_binary_classifier.pth"]
    event_files = list(run_dir.rglob("events.out.tfevents.*"))
    assert event_files and all(f.is_relative_to(run_dir / "tensorboard") for f in event_files)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1, "only the main process logs"
    assert result.stdout.count("Test set: Average loss") == 1, "only the main process prints"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["distributed"]["num_processes"] == 2


def test_ranks_end_with_identical_weights(two_process_run):
    folder, _ = two_process_run
    rank0, rank1 = (torch.load(folder / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def test_consolidated_weights_reproduce_the_trained_model(two_process_run, small_data):
    folder, _ = two_process_run
    state = torch.load(folder / "run" / "COVID_binary_classifier.pth", weights_only=True, map_location="cpu")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    assert all(v.device.type == "cpu" for v in state.values())
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())

    trained = Net()
    trained.load_state_dict(torch.load(folder / "dump" / "rank0.pt", weights_only=True))
    data = load_data_dir(small_data)
    shipped = load_model(folder / "run" / "COVID_binary_classifier.pth")
    np.testing.assert_array_equal(predict(shipped, data.images), predict(trained.eval(), data.images))

    # metrics.json agrees with what the shipped weights do on the test split.
    targets = to_binary(data.labels)
    test_rows = split_indices(targets, 0.3, 0.1).test
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    threshold = metrics["test"]["threshold"]
    accuracy = ((predict(shipped, data.images[test_rows]) >= threshold) == targets[test_rows]).mean()
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert metrics["test"]["n"] == len(test_rows)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_two_nodes_on_localhost_match_the_two_process_run(two_process_run, small_data, tmp_path):
    """Two torchrun launchers (--nnodes 2, one process each) form one job with the same result."""
    port = free_port()
    launchers = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                   str(HELPERS / "train_and_dump.py"), str(tmp_path / "dump"),
                   *map(str, small_args(small_data, tmp_path / "run"))]
        launchers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()))
    outputs = [launcher.communicate(timeout=240) for launcher in launchers]
    for launcher, (stdout, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]

    two_proc_folder, _ = two_process_run
    reference = torch.load(two_proc_folder / "run" / "COVID_binary_classifier.pth", weights_only=True)
    multi_node = torch.load(tmp_path / "run" / "COVID_binary_classifier.pth", weights_only=True)
    for key in reference:
        torch.testing.assert_close(multi_node[key], reference[key], rtol=0, atol=1e-6, msg=key)
    rank0, rank1 = (torch.load(tmp_path / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def _probe_weights(path):
    return torch.load(path, weights_only=True)


def test_gradient_sync_two_half_batches_equal_one_full_batch(small_data, tmp_path):
    """Dropout off, SyncBatchNorm on: 2 processes x 20 images == 1 process x 40 images per step.

    Runs covid_ddp's own loader, DDP wrapping, SyncBatchNorm and training loop for 3 Adam steps.
    """
    probe = HELPERS / "step_probe.py"
    torchrun(2, probe, [tmp_path / "two.pt", small_data, 40, 1, 1, 0])
    run([sys.executable, probe, tmp_path / "one.pt", small_data, 40, 1, 1, 0])
    two, one = _probe_weights(tmp_path / "two.pt"), _probe_weights(tmp_path / "one.pt")
    moved = max((one[k] - Net().double().state_dict()[k]).abs().max().item() for k in ("fc1.weight",))
    assert moved > 1e-4, "the probe must actually train"
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)


def test_gradient_accumulation_two_half_batches_equal_one_full_batch(small_data, tmp_path):
    """--grad-accum-steps 2 on batches of 20 == batches of 40 (dropout off, BatchNorm statistics frozen)."""
    probe = HELPERS / "step_probe.py"
    run([sys.executable, probe, tmp_path / "accum.pt", small_data, 20, 2, 0, 1])
    run([sys.executable, probe, tmp_path / "full.pt", small_data, 40, 1, 0, 1])
    accum, full = _probe_weights(tmp_path / "accum.pt"), _probe_weights(tmp_path / "full.pt")
    for key in full:
        torch.testing.assert_close(accum[key], full[key], rtol=0, atol=1e-5, msg=key)
    # And it is not vacuous: without accumulation the same batches of 20 take twice the steps.
    run([sys.executable, probe, tmp_path / "plain.pt", small_data, 20, 1, 0, 1])
    plain = _probe_weights(tmp_path / "plain.pt")
    assert (plain["fc1.weight"] - full["fc1.weight"]).abs().max() > 1e-4
