"""Real multi-process runs on CPU (gloo): sharding, exact evaluation, one consolidated output.

Each launcher start costs seconds, so one 2-process training run (a module fixture) serves
several tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import HELPERS, SMALL_RUN, FakeMirror, clean_env, free_port, run, small_args, torchrun

from covid_ddp import Net, load_model, predict
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.image_rows import write_store
from covid_ddp.data.splits import split_indices


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
    store = folder / "store"
    store.mkdir()
    write_store(store / "train_images64.npy", load_data_dir(small_data).images)
    (store / "train_labels.npz").write_bytes((small_data / "train_labels.npz").read_bytes())
    torchrun(2, HELPERS / "shard_probe.py", [folder, small_data, store])
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


def test_workers_reading_a_mapped_store_draw_the_same_batches(shard_probe):
    """--workers 2 over a store mapped read-only: the same rows per rank and epoch (the order is drawn
    in the training process, whatever the workers do), each with its own pixels."""
    for rank in shard_probe:
        assert rank["store_is_mapped"]
        assert rank["train_rows_store_workers"] == rank["train_rows"]
        assert rank["store_workers_pixels_match"]
        # A rank's device is cpu:0, and .to("cpu:0") copies: the set twice in every process.
        assert rank["store_not_copied_on_rank_device"], "a rank copied the mapped store into its own memory"


def test_balanced_draws_are_one_draw_sharded_over_ranks_on_both_paths(shard_probe):
    """--balance-sources: rank r takes the r-th half of every global batch of the one weighted draw."""
    from covid_ddp.training.loader import epoch_permutation

    rank0, rank1 = shard_probe
    train = np.array(rank0["split_train"])
    for epoch in (1, 2):
        drawn = train[epoch_permutation(len(train), 1, epoch, np.array(rank0["weights"])).numpy()].tolist()
        interleaved = []
        for start in range(0, len(drawn) - len(drawn) % 40, 40):
            assert rank0["balanced"][epoch - 1][start // 2:start // 2 + 20] == drawn[start:start + 20]
            assert rank1["balanced"][epoch - 1][start // 2:start // 2 + 20] == drawn[start + 20:start + 40]
            interleaved += drawn[start:start + 40]
        assert len(interleaved) == len(rank0["balanced"][epoch - 1]) * 2
    for rank in shard_probe:
        assert rank["balanced"] == rank["balanced_dataloader"]
    assert len(set(rank0["balanced"][0])) < len(rank0["balanced"][0]), "with replacement: some rows come twice"


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
    assert config["distributed"]["distributed_type"].endswith("MULTI_CPU"), "torchrun without --cpu: a gloo group"


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


def _start_node(node_rank: int, port: int, cwd, flags: list, env: dict, wrapper=()) -> subprocess.Popen:
    """One torchrun agent of a 2-node job (one process each), as a second machine would start it."""
    command = [*wrapper, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
               str(HELPERS / "train_and_dump.py"), str(cwd / "dump"), *map(str, flags)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def test_two_nodes_from_different_folders_make_one_run_and_download_once_each(two_process_run, small_data, tmp_path):
    """Two torchrun agents (--nnodes 2) on 127.0.0.1, started in different working directories,
    each with its own data cache (a machine's local disk): one job, one run folder (the
    default runs/<timestamp>, resolved by the main process), one download per machine, and
    the weights of the 2-process run."""
    mirror = FakeMirror()
    mirror.files = {name: (small_data / name).read_bytes() for name in ("train_images64.npz", "train_labels.npz")}
    port, launchers = free_port(), []
    flags = [a.format(data=small_data) for a in SMALL_RUN if a not in ("--data-dir", "{data}")]
    try:
        for node in (0, 1):
            (tmp_path / f"node{node}").mkdir()
            env = clean_env(XDG_CACHE_HOME=str(tmp_path / f"node{node}" / "cache"))
            launchers.append(_start_node(node, port, tmp_path / f"node{node}", [*flags, "--mcfam-url", mirror.url],
                                         env))
        outputs = [launcher.communicate(timeout=240) for launcher in launchers]
    finally:
        mirror.close()
    for launcher, (stdout, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]
    assert sorted(mirror.requests) == ["train_images64.npz"] * 2 + ["train_labels.npz"] * 2, "once per machine"
    run_dirs = list((tmp_path / "node0" / "runs").iterdir())
    assert len(run_dirs) == 1 and not (tmp_path / "node1" / "runs").exists(), "one run folder, the main process's"

    two_proc_folder, _ = two_process_run
    reference = torch.load(two_proc_folder / "run" / "COVID_binary_classifier.pth", weights_only=True)
    multi_node = torch.load(run_dirs[0] / "COVID_binary_classifier.pth", weights_only=True)
    for key in reference:
        torch.testing.assert_close(multi_node[key], reference[key], rtol=0, atol=1e-6, msg=key)
    rank0, rank1 = (torch.load(tmp_path / f"node{n}" / "dump" / f"rank{n}.pt", weights_only=True) for n in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert len(list((run_dirs[0] / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_run_folder_one_machine_cannot_see_is_refused_in_one_line(small_data, tmp_path):
    """Node 1 sees another filesystem at the run folder's path (its own mount namespace with a
    tmpfs there, as a machine without the shared disk would): the job refuses, naming the fix."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("needs unshare --mount (root) to give one node a filesystem of its own")
    shared = tmp_path / "shared"
    shared.mkdir()
    flags = small_args(small_data, shared / "run")
    port = free_port()
    private_disk = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs tmpfs "{shared}" && exec "$0" "$@"']
    started = time.monotonic()
    launchers = [_start_node(0, port, tmp_path, flags, clean_env()),
                 _start_node(1, port, tmp_path, flags, clean_env(), wrapper=private_disk)]
    outputs = [launcher.communicate(timeout=120) for launcher in launchers]
    assert time.monotonic() - started < 40, "the job ends at once, not after --dist-timeout"
    assert all(launcher.returncode != 0 for launcher in launchers)
    errors = [line for _, stderr in outputs for line in stderr.splitlines() if "covid-ddp-train: error:" in line]
    assert len(errors) == 1 and "not shared with the main process" in errors[0], errors
    assert "every machine mounts at the same path" in errors[0]
    assert "covid-ddp-train: error:" in outputs[0][1], "printed by the main process"
    for _, stderr in outputs:  # the only traceback: each launcher's own ChildFailedError summary
        assert stderr.count("Traceback (most recent call last)") == stderr.count("errors.ChildFailedError:"), stderr


def _probe(cases: list, small_data, tmp_path, processes: int) -> dict:
    out = tmp_path / f"probe{processes}.json"
    if processes == 1:
        run([sys.executable, HELPERS / "step_probe.py", out, small_data, *cases])
    else:
        torchrun(processes, HELPERS / "step_probe.py", [out, small_data, *cases])
    return json.loads(out.read_text())


def _assert_exact(results: dict) -> None:
    for case, result in results.items():
        assert result["max_difference"] < 1e-10, (case, result)
        assert result["moved"] > 1e-4, (case, "the probe must actually train")


def test_two_processes_train_exactly_like_one_on_the_whole_batch(small_data, tmp_path):
    """Through prepare_run and train_one_epoch, with SGD in float64: 2 processes x half batches,
    synced by DDP (and SyncBatchNorm), equal plain PyTorch on whole batches to 1e-10, also with
    accumulation, a short last cycle and clipping of the synced gradient."""
    results = _probe(["sync", "sync_accumulation_clipping"], small_data, tmp_path, processes=2)
    _assert_exact(results)
    assert results["sync_accumulation_clipping"]["largest_gradient_norm"] > 0.05, "clipping was engaged"


def test_accumulation_short_cycles_and_clipping_equal_whole_batch_steps(small_data, tmp_path):
    results = _probe(["accumulation", "short_last_cycle", "clipping"], small_data, tmp_path, processes=1)
    _assert_exact(results)
    assert results["clipping"]["largest_gradient_norm"] > 0.05, "clipping was engaged"
