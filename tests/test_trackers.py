"""--log-with: which trackers, refused in one line before anything starts. MLflow and W&B for
real: tests/test_interruptions.py tracks the 2-process run it stops and resumes (trackers_check)."""

from __future__ import annotations

import importlib.util

from conftest import refused

from covid_ddp.commands.train import main as train_main


def test_a_tracker_that_is_not_installed_or_unknown_is_refused_in_one_line(capsys, small_data, tmp_path, monkeypatch):
    """Before anything is started or written: the extra to install, or the trackers there are."""
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


def test_a_tracker_failing_at_the_end_is_a_warning_and_the_others_still_end(capsys, tmp_path, monkeypatch):
    """The run is done when the trackers log its files: a tracker's server gone is told, not raised."""
    from covid_ddp.training import trackers

    class Tracker:
        def __init__(self, name):
            self.name, self.finished = name, False

        def finish(self):
            self.finished = True

    def unreachable(tracker, folder):
        raise ConnectionError("the tracking server did not answer\nmore")

    monkeypatch.setattr(trackers, "_log_artifacts", unreachable)
    first, second = Tracker("aim"), Tracker("dvclive")
    trackers.TrackerRuns(tmp_path, [first, second]).end()
    err = capsys.readouterr().err
    assert err.count("warning: could not log the run's files to") == 2 and "(the tracking server did not answer); the run folder" in err
    assert first.finished and second.finished, "each tracker run still ended"
