"""--log-with: MLflow and W&B for real (a local sqlite store; W&B offline), beside TensorBoard."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    TRAIN_SCRIPT,
    clean_env,
    refused,
    run,
    small_args,
    torchrun,
)

from covid_ddp.commands.train import main as train_main
from covid_ddp.run_files import (
    METRICS_FILE,
    TRACKERS_FILE,
    WEIGHTS_FILE,
    WEIGHTS_SAFETENSORS,
)


def test_mlflow_and_wandb_keep_a_stopped_two_process_run_and_its_resume_as_one_run_each(small_data, tmp_path):
    """Two processes log once (the main process), a SIGTERM inside epoch 2 ends the tracker runs
    as KILLED, and the resume on one process logs on into the same runs, then the run's files."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run_dir, store = tmp_path / "run", tmp_path / "mlflow.db"
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}", WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    # 252 training images in global batches of 40: 6 steps an epoch; the 8th is inside epoch 2.
    stopped = torchrun(2, HELPERS / "faulty_train.py", ["sigterm:8", *small_args(
        small_data, run_dir, "--log-with", "tensorboard,mlflow,wandb")], env=env, check=False)
    assert stopped.returncode != 0 and "stopped by SIGTERM" in stopped.stderr, stopped.stderr[-3000:]
    ids = json.loads((run_dir / TRACKERS_FILE).read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    first = client.get_run(ids["mlflow"]["run_id"])
    assert first.info.status == "KILLED"
    tensorboard_files = sorted((run_dir / "tensorboard").rglob("*"))

    resumed = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, run_dir, "--resume", "auto",
                                                             "--log-with", "mlflow,wandb")], env=env)
    assert "Resumed from" in resumed.stdout
    after_resume = json.loads((run_dir / TRACKERS_FILE).read_text())
    assert {name: after_resume[name]["run_id"] for name in ids} == {name: ids[name]["run_id"] for name in ids}, \
        "the same tracker runs, logged on into"
    assert sorted((run_dir / "tensorboard").rglob("*")) == tensorboard_files, "--log-with without tensorboard"

    experiment = client.get_experiment_by_name("covid_ddp")
    assert len(client.search_runs([experiment.experiment_id])) == 1, "one run: the main process's"
    finished = client.get_run(ids["mlflow"]["run_id"])
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["covid_ddp.run_folder"] == str(run_dir) == finished.data.params["run_folder"]
    assert finished.data.params["lr"] == "0.001" and finished.data.params["num_processes"] == "2"
    history = {name: [(m.step, m.value) for m in client.get_metric_history(finished.info.run_id, name)]
               for name in ("epoch", "epoch/validation_auc", "epoch/lr", "epoch/train_loss")}
    assert [value for _, value in history["epoch"]] == [1, 2]
    assert [step for step, _ in history["epoch/validation_auc"]] == [6, 12], "the training step: every log's x-axis"
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert finished.data.metrics["test/roc_auc"] == pytest.approx(metrics["test"]["roc_auc"])
    assert finished.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    artifacts = {artifact.path for artifact in client.list_artifacts(finished.info.run_id)}
    assert {WEIGHTS_FILE, WEIGHTS_SAFETENSORS, METRICS_FILE, "model_card.md", "config.json"} <= artifacts

    wandb_runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{ids['wandb']['run_id']}"))
    assert len(wandb_runs) == 2 and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    stopped_log, resumed_log = (_wandb_records(next(folder.glob("*.wandb"))) for folder in wandb_runs)
    config = {item.key: json.loads(item.value_json) for record in stopped_log if record.HasField("config")
              for item in record.config.update}
    assert config["lr"] == 0.001 and config["run_folder"] == str(run_dir)
    assert _logged(stopped_log, "epoch") == [1] and _logged(resumed_log, "epoch") == [2]
    assert _logged(resumed_log, "test/roc_auc") == [pytest.approx(metrics["test"]["roc_auc"])]
    assert not [record for record in stopped_log if record.HasField("artifact")], "a stopped run has no files to keep"
    (artifact,) = [record.artifact for record in resumed_log if record.HasField("artifact")]
    assert artifact.type == "model"
    assert {WEIGHTS_FILE, WEIGHTS_SAFETENSORS, METRICS_FILE, "model_card.md"} <= {
        entry.path for entry in artifact.manifest.contents}


def test_a_tracker_that_is_not_installed_or_unknown_is_refused_in_one_line(capsys, small_data, tmp_path, monkeypatch):
    """Before anything is started or written: the extra to install, or the trackers there are."""
    import importlib.util

    for flag, fragment in (("aim", "the aim package is not installed; pip install aim"),
                           ("tensorboard,mlfow", "--log-with mlfow: not a tracker accelerate knows; choose from")):
        code = train_main(["--cpu", "--data-dir", str(small_data), "--output-dir", str(tmp_path / "run"),
                           "--log-with", flag])
        refused(capsys, code, fragment)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    refused(capsys, train_main(["--cpu", "--data-dir", str(small_data), "--log-with", "mlflow"]),
            'the mlflow package is not installed; pip install -e ".[mlflow]"')
    assert not (tmp_path / "run").exists()


# --- W&B's offline run file ---------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of chunks, each a 7-byte header: crc32c, length, type; protobuf Records)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, position, pending = [], 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _logged(records: list, key: str) -> list:
    return [json.loads(item.value_json) for record in records if record.HasField("history")
            for item in record.history.item if (item.key or "/".join(item.nested_key)) == key]
