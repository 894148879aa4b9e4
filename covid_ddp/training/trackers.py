"""Experiment trackers beside TensorBoard (``--log-with tensorboard,mlflow,wandb``): accelerate's
tracker classes, started by the main process once the run folder is known.

accelerate starts every tracker it is given under one project name, which is also the folder
TensorBoard writes into; so TensorBoard stays accelerate's own ``init_trackers`` (the run's
``tensorboard/`` folder), and the others are built here from accelerate's classes with names of
their own: the MLflow experiment and the W&B project ``covid_ddp``, the run named after its
folder and tagged with its path. They join ``accelerator.trackers``, so ``accelerator.log``
reaches every one: the flags (as params), each epoch's losses, validation ROC AUC and learning
rate, and the test metrics. They outlive the job's process group: the files a run writes after it
(the model card, the audit) are logged as artifacts once they exist, then each run is ended with
the status the run ended with.

A tracker is configured by its own environment variables (``MLFLOW_TRACKING_URI``,
``WANDB_MODE=offline``, ...). The run folder's ``trackers.json`` records each tracker's run id,
and a resumed run logs on into the same tracker runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..cli import say
from ..errors import first_line
from ..files import write_json
from ..run_files import CHECKPOINTS_DIR, TENSORBOARD_DIR, TRACKERS_FILE
from .tracker_choice import TENSORBOARD

PROJECT = "covid_ddp"  # the MLflow experiment, the W&B project (MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT override)
RUN_FOLDER_TAG = "covid_ddp.run_folder"
NOT_KEPT = {CHECKPOINTS_DIR, TENSORBOARD_DIR, "wandb", "mlruns", "aim"}  # the training state, the trackers' own
# Ended runs: accelerate ends them as finished; a failed or stopped run says so in the tracker.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def recorded_runs(folder: Path) -> dict:
    """The tracker runs of a run folder (its ``trackers.json``): {tracker: {"run_id": ..., ...}}."""
    path = folder / TRACKERS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable: a resume starts new tracker runs rather than fail
        return {}


class TrackerRuns:
    """The main process's trackers other than TensorBoard, for one run folder."""

    def __init__(self, folder: Path, trackers: list):
        self.folder, self.trackers = folder, trackers

    @classmethod
    def start(cls, accelerator, names: tuple[str, ...], folder: Path, params: dict, resumed: bool) -> "TrackerRuns":
        """Each tracker's run (a resumed run's: the one ``trackers.json`` names), its params logged,
        joined to ``accelerator.trackers``; their ids recorded in ``trackers.json``."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        recorded = recorded_runs(folder) if resumed else {}
        runs = cls(folder, [])
        for name in names:
            if name == TENSORBOARD:
                continue
            kind, earlier = LOGGER_TYPE_TO_CLASS[name], recorded.get(name, {})
            tracker = kind(**_arguments(name, folder, earlier, kind.requires_logging_directory))
            if hasattr(tracker, "start"):  # accelerate >= 1.5 starts a tracker here; earlier ones in __init__
                tracker.start()
            runs.trackers.append(tracker)
            _link_to(tracker, folder)
            if not earlier.get("run_id"):
                # A new tracker run: the flags it started with. (MLflow refuses a param changed on
                # its run: a resume's changes are recorded in config.json's resumes.)
                tracker.store_init_configuration(dict(params))  # (accelerate 1.3 drops entries from it)
        accelerator.trackers.extend(runs.trackers)
        if runs.trackers:
            write_json(folder / TRACKERS_FILE, {**recorded, **runs.ids()})
        return runs

    def ids(self) -> dict:
        return {tracker.name: _describe(tracker) for tracker in self.trackers}

    def detach(self, accelerator) -> None:
        """Out of ``accelerator.trackers``: ``end_training`` (the job's end) leaves them open for ``end``."""
        accelerator.trackers[:] = [t for t in accelerator.trackers if all(t is not own for own in self.trackers)]

    def end(self, status: str = FINISHED) -> None:
        """A finished run's files as artifacts (where the tracker takes them), then each run ended.
        A tracker that fails here (its server gone, a full disk) is a warning: the run is done,
        and its folder holds every file."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            if status == FINISHED:
                self._told_not_raised(lambda: _log_artifacts(tracker, self.folder), f"log the run's files to {tracker.name}")
            self._told_not_raised(lambda: _finish(tracker, status), f"end the {tracker.name} run")

    def _told_not_raised(self, work, what: str) -> None:
        try:
            work()
        except Exception as error:  # any tracker's failure, whatever its kind: told, not raised
            say(f"covid-ddp-train: warning: could not {what} ({first_line(error)}); the run folder {self.folder} "
                "holds the run")


def params_of(config: dict, num_processes: int, mixed_precision: str, folder: Path) -> dict:
    """The flags as the run settled them, as trackers take params: scalars and strings (a list of
    folders joined), with the process count and the run folder."""
    values = {name: ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
              for name, value in config.items()}
    return {**values, "num_processes": num_processes, "mixed_precision": mixed_precision,
            "run_folder": str(folder)}


def run_files(folder: Path) -> list[Path]:
    """What a tracker keeps of a run: every file of its folder (weights, their sidecar, metrics.json,
    config.json, the model card, predictions.csv, the audit's figure and tables), not the
    checkpoints, TensorBoard's events, a tracker's own files or the lock."""
    return sorted(path for path in folder.rglob("*") if path.is_file()
                  and not any(part in NOT_KEPT or part.startswith(".") for part in path.relative_to(folder).parts))


# --- per tracker ------------------------------------------------------------------------------


def _arguments(name: str, folder: Path, recorded: dict, needs_folder: bool) -> dict:
    """Each tracker's constructor arguments: named ``covid_ddp``, the run after its folder (a
    tracker that writes files of its own, Aim, writes them in the run folder)."""
    if name == "mlflow":
        # (Its tag is set on the run once started: tags given here would label the experiment too.)
        return {"experiment_name": PROJECT, "run_id": recorded.get("run_id"), "run_name": folder.name,
                "description": f"covid_ddp run folder {folder}"}
    if name == "wandb":
        resumed = {"id": recorded["run_id"], "resume": "allow"} if recorded.get("run_id") else {}
        return {"run_name": PROJECT, "name": folder.name, "notes": f"covid_ddp run folder {folder}", **resumed}
    return {"run_name": PROJECT, **({"logging_dir": str(folder)} if needs_folder else {})}


def _link_to(tracker, folder: Path) -> None:
    """The tracker's run names its run folder (W&B: in its notes, given at the start)."""
    if tracker.name == "mlflow":
        from mlflow.tracking import MlflowClient

        MlflowClient().set_tag(tracker.tracker.info.run_id, RUN_FOLDER_TAG, str(folder))


def _describe(tracker) -> dict:
    """What trackers.json says of a tracker's run: its id and where it lives."""
    if tracker.name == "mlflow":
        import mlflow

        info = tracker.tracker.info
        return {"run_id": info.run_id, "experiment_id": info.experiment_id,
                "tracking_uri": mlflow.get_tracking_uri(), "artifact_uri": info.artifact_uri}
    if tracker.name == "wandb":
        run = tracker.tracker
        online = not getattr(run, "offline", False)  # (an offline run's url is a warning)
        return {"run_id": run.id, "project": run.project, "dir": run.dir, **({"url": run.url} if online else {})}
    run = getattr(tracker, "tracker", None)
    run_id = getattr(run, "id", None) or getattr(run, "hash", None)
    return {"run_id": str(run_id)} if run_id is not None else {}


def _log_artifacts(tracker, folder: Path) -> None:
    files = run_files(folder)
    if tracker.name == "mlflow":
        from mlflow.tracking import MlflowClient

        client, run_id = MlflowClient(), tracker.tracker.info.run_id
        for path in files:  # (in the folder's own layout: audit-test/audit.png)
            parent = path.parent.relative_to(folder).as_posix()
            client.log_artifact(run_id, str(path), None if parent == "." else parent)
    elif tracker.name == "wandb":
        import wandb

        # A model artifact of the run's files, named after the folder (W&B's names allow [\w.-]).
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{PROJECT}-{folder.name}"), type="model",
                                  metadata={"run_folder": str(folder)})
        for path in files:
            artifact.add_file(str(path), name=path.relative_to(folder).as_posix())
        tracker.tracker.log_artifact(artifact)


def _finish(tracker, status: str) -> None:
    if tracker.name == "mlflow":
        import mlflow

        mlflow.end_run(status=status)
    elif tracker.name == "wandb":
        tracker.tracker.finish(exit_code=0 if status == FINISHED else 1)
    else:
        tracker.finish()
