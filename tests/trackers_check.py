"""What a run logged to MLflow and W&B, read back: for the tests that run real trackers
(``tests/test_interruptions.py`` stops and resumes a tracked 2-process run)."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from covid_ddp.run_files import METRICS_FILE, TRACKERS_FILE, WEIGHTS_FILE, WEIGHTS_SAFETENSORS

INSTALLED = all(importlib.util.find_spec(name) for name in ("mlflow", "wandb"))
FIGURE = "audit-test/audit.png"
RUN_FILES = {WEIGHTS_FILE, WEIGHTS_SAFETENSORS, METRICS_FILE, "model_card.md", "config.json", FIGURE}


def add_a_figure_in_a_subfolder(run_dir: Path) -> None:
    """A file where the audit writes its figure: the trackers keep the folder's files in its layout."""
    (run_dir / FIGURE).parent.mkdir()
    (run_dir / FIGURE).write_bytes(b"\x89PNG\r\n")


def tracker_env(folder: Path) -> dict:
    """A local MLflow store (sqlite) and W&B offline, both under ``folder``: nothing leaves the
    machine, and nothing is written beside the tests (MLflow puts a new experiment's artifacts in
    ./mlruns of the process: the experiment is made first, its artifacts under ``folder``)."""
    if INSTALLED:
        import mlflow

        mlflow.MlflowClient(tracking_uri=tracking_uri(folder)).create_experiment(
            "covid_ddp", artifact_location=str(folder / "mlruns"))
    return {"MLFLOW_TRACKING_URI": tracking_uri(folder), "WANDB_MODE": "offline", "WANDB_DIR": str(folder)}


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_run(folder: Path, run_dir: Path):
    """The MLflow run ``run_dir``'s trackers.json names, and how many runs its experiment holds."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(folder))
    run = client.get_run(json.loads((run_dir / TRACKERS_FILE).read_text())["mlflow"]["run_id"])
    return client, run, len(client.search_runs([client.get_experiment_by_name("covid_ddp").experiment_id]))


def assert_logged_to_mlflow(folder: Path, run_dir: Path, steps_per_epoch: int, processes: int) -> None:
    """One run (the main process's), finished: the flags, each epoch at its last training step, the
    test metrics of metrics.json, the run's files."""
    client, run, runs = mlflow_run(folder, run_dir)
    assert runs == 1, "one run: the main process's"
    assert run.info.status == "FINISHED"
    assert run.data.tags["covid_ddp.run_folder"] == str(run_dir) == run.data.params["run_folder"]
    assert run.data.params["lr"] == "0.001" and run.data.params["num_processes"] == str(processes)
    epochs = client.get_metric_history(run.info.run_id, "epoch")
    assert [(m.step, m.value) for m in epochs] == [(steps_per_epoch, 1), (2 * steps_per_epoch, 2)]
    assert len(client.get_metric_history(run.info.run_id, "epoch/validation_auc")) == 2
    metrics = json.loads((run_dir / METRICS_FILE).read_text())["test"]
    assert run.data.metrics["test/roc_auc"] == pytest.approx(metrics["roc_auc"])
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    kept = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    kept |= {artifact.path for artifact in client.list_artifacts(run.info.run_id, Path(FIGURE).parent.as_posix())}
    assert RUN_FILES <= kept and not any(path.startswith(("checkpoints", "tensorboard")) for path in kept)


def assert_logged_to_wandb(folder: Path, run_dir: Path, stopped_in_epoch: int) -> None:
    """W&B offline writes one run file per process start: the stopped start's and the resumed one's,
    under the one run id trackers.json keeps."""
    run_id = json.loads((run_dir / TRACKERS_FILE).read_text())["wandb"]["run_id"]
    starts = sorted((folder / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(starts) == 2 and len(list((folder / "wandb").glob("offline-run-*"))) == 2
    stopped, resumed = (wandb_records(next(start.glob("*.wandb"))) for start in starts)
    config = {item.key: json.loads(item.value_json) for record in stopped if record.HasField("config")
              for item in record.config.update}
    assert config["lr"] == 0.001 and config["run_folder"] == str(run_dir)
    assert logged(stopped, "epoch") == list(range(1, stopped_in_epoch))
    assert logged(resumed, "epoch") == list(range(stopped_in_epoch, 3))
    metrics = json.loads((run_dir / METRICS_FILE).read_text())["test"]
    assert logged(resumed, "test/roc_auc") == [pytest.approx(metrics["roc_auc"])]
    assert not [record for record in stopped if record.HasField("artifact")], "a stopped run has no files to keep"
    (artifact,) = [record.artifact for record in resumed if record.HasField("artifact")]
    assert artifact.type == "model" and RUN_FILES <= {entry.path for entry in artifact.manifest.contents}


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of chunks, each behind a 7-byte header: crc32c, length, type), protobuf Records."""
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


def logged(records: list, key: str) -> list:
    return [json.loads(item.value_json) for record in records if record.HasField("history")
            for item in record.history.item if (item.key or "/".join(item.nested_key)) == key]
