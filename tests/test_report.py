"""covid-ddp-report: every held-out source that can be scored, over seeds, as markdown and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import clean_env, refused, write_mcfam

from covid_ddp.commands.report import main as report_main
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.evaluation.report import settings


def test_settings_hold_out_every_source_that_leaves_both_classes_to_train_on():
    meta = {"dataset": np.array(["a", "a", "a", "a", "b", "b", "c", "c"])}
    targets = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    chosen = settings(meta, targets, without=("c",))
    assert list(chosen) == ["patient-level", "patient-level without c", "held out: a", "held out: b", "held out: c"]
    assert chosen["held out: b"] == ["--group-split", "--holdout-source", "b"]
    lonely = settings({"dataset": np.array(["a", "a", "b", "b"])}, np.array([0, 0, 1, 1]), without=())
    assert list(lonely) == ["patient-level"], "holding out either would leave one class to train on"


def test_a_report_over_two_folders_writes_the_table(tmp_path, monkeypatch, capsys):
    images, labels = make_synthetic(360, seed=4)
    mixed = write_mcfam(tmp_path / "mixed", images[:240], labels[:240])
    covid_rows = np.flatnonzero(labels[240:].argmax(1) >= 2) + 240  # a source of COVID images only
    write_mcfam(tmp_path / "covidonly", images[covid_rows], labels[covid_rows])
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    code = report_main(["--data-dir", str(mixed), str(tmp_path / "covidonly"), "--seeds", "1,2", "--ensemble",
                        "--output-dir", str(tmp_path / "report"), "--", "--epochs", "1", "--batch-size", "40",
                        "--bootstrap", "50", "--log-images-every", "0"])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_setting = {row["setting"]: row["summary"] for row in report["rows"] if row["recipe"] == "default"}
    assert list(by_setting) == ["patient-level", "held out: covidonly"], "'mixed' alone holds both classes"
    assert [(row["setting"], row["recipe"]) for row in report["rows"]] == [
        ("patient-level", "default"), ("patient-level", "default ensemble"),
        ("held out: covidonly", "default"), ("held out: covidonly", "default ensemble")]
    ensemble = report["rows"][1]
    assert ensemble["summary"]["roc_auc"]["std"] is None and ensemble["metrics"]["bootstrap"]["resamples"] == 50
    assert ensemble["metrics"]["bootstrap"]["seed"] == 1, "an ensemble's intervals: its first run's seed, as evaluate's"
    held = by_setting["held out: covidonly"]
    assert held["n"] == len(covid_rows) and held["roc_auc"] is None and held["specificity"] is None
    assert 0 <= held["sensitivity"]["mean"] <= 1 and len(held["sensitivity"]["interval"]) == 2
    assert 0.5 < by_setting["patient-level"]["roc_auc"]["mean"] <= 1
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| held out: covidonly | default |" in table and "n/a" in table
    assert "| held out: covidonly | default ensemble |" in table
    assert "**Confounded:** covidonly: COVID only" in table, "the report repeats the confounding warning"
    run_dir = tmp_path / "report" / "held-out-covidonly" / "default" / "seed_2"
    assert (run_dir / "COVID_binary_classifier.pth").is_file()
    assert json.loads((run_dir / "reported.json").read_text())["setting"] == "held out: covidonly"
    assert "Seed 2 of setting 'held out: covidonly'" in (run_dir / "model_card.md").read_text()
    trained_with = report["rows"][2]["runs"]["2"]["trained_with"]
    assert "--seed 2" in trained_with and "--batch-size 40" in trained_with, "each run's own command, recorded"
    # The same folder asked for another recipe: its finished runs are not credited with it.
    recorded = (tmp_path / "report" / "report.json").read_text()
    capsys.readouterr()
    code = report_main(["--data-dir", str(mixed), str(tmp_path / "covidonly"), "--seeds", "1,2", "--output-dir",
                        str(tmp_path / "report"), "--", "--epochs", "1", "--batch-size", "40", "--lr", "0.0001",
                        "--bootstrap", "50", "--log-images-every", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--lr 0.0001 (the run's: 0.001): the run in" in err, err[-2000:]
    assert (tmp_path / "report" / "report.json").read_text() == recorded


def test_only_runs_the_named_settings_and_names_the_known_ones(tmp_path, capsys):
    images, labels = make_synthetic(120, seed=4)
    write_mcfam(tmp_path / "a", images[:60], labels[:60])
    write_mcfam(tmp_path / "b", images[60:], labels[60:])
    code = report_main(["--data-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--only", "held-out-c",
                        "--output-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code != 0 and "no setting named held-out-c" in err
    assert "patient-level, held-out-a, held-out-b" in err and "Traceback" not in err
    assert not (tmp_path / "report").exists(), "nothing trained, nothing written"


def test_only_adds_its_settings_to_the_earlier_report_of_the_same_runs(tmp_path, monkeypatch):
    """The trainer is replaced by a stub: which settings run and what lands in the report is the point."""
    import covid_ddp.evaluation.report as report

    images, labels = make_synthetic(120, seed=4)
    write_mcfam(tmp_path / "a", images[:60], labels[:60])
    write_mcfam(tmp_path / "b", images[60:], labels[60:])
    trained = []

    def fake_run(launcher, flags, folder):
        trained.append(folder.relative_to(tmp_path / "report").parts[0])
        auc = 0.9 if "--augment" in flags else 0.6
        return {"n": 60, "n_per_class": {"covid": 30, "non_covid": 30}, "roc_auc": auc, "sensitivity": 0.5,
                "specificity": 0.5, "ci95": {}}

    monkeypatch.setattr(report, "train_once", fake_run)
    arguments = ["--data-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "1",
                 "--output-dir", str(tmp_path / "report")]
    assert report_main(arguments) == 0
    assert trained == ["patient-level", "held-out-a", "held-out-b"]
    trained.clear()
    assert report_main([*arguments, "--only", "held-out-b", "--variant", "aug=--augment"]) == 0
    assert trained == ["held-out-b", "held-out-b"], "only the named setting, for each recipe"
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert [(row["setting"], row["recipe"]) for row in rows] == [
        ("patient-level", "default"), ("held out: a", "default"), ("held out: b", "default"), ("held out: b", "aug")]
    assert rows[-1]["summary"]["roc_auc"]["mean"] == 0.9
    assert "| held out: a | default |" in (tmp_path / "report" / "report.md").read_text(), "the earlier rows stay"
    assert report_main([*arguments, "--only", "held-out-b", "--variant", "late=--dropout 0.5"]) == 0
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert [row["recipe"] for row in rows if row["setting"] == "held out: b"] == ["default", "aug", "late"], \
        "a recipe added later comes after the earlier ones"


def test_training_flags_that_do_not_hold_are_refused_before_anything_is_trained(tmp_path, capsys):
    images, labels = make_synthetic(120, seed=4)
    write_mcfam(tmp_path / "a", images[:60], labels[:60])
    write_mcfam(tmp_path / "b", images[60:], labels[60:])
    base = ["--data-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "report")]
    refused(capsys, report_main([*base, "--", "--epochs", "many"]),
            "the training flags of recipe 'default' (--epochs many)", "--epochs")
    refused(capsys, report_main([*base, "--variant", "late=--lr nan"]), "recipe 'late' (--lr nan)", "--lr")
    assert not (tmp_path / "report").exists()


def test_a_run_refused_by_training_leaves_no_report_folder_behind(tmp_path, capsys, monkeypatch):
    """A refusal that needs the data (a batch larger than the training part) comes from the first
    run itself: the report says it in one line, and takes back the folders and log it made."""
    images, labels = make_synthetic(120, seed=4)
    write_mcfam(tmp_path / "a", images[:60], labels[:60])
    write_mcfam(tmp_path / "b", images[60:], labels[60:])
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    code = report_main(["--data-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "1",
                        "--output-dir", str(tmp_path / "report"), "--", "--batch-size", "1000"])
    refused(capsys, code, "a training run was refused: covid-ddp-train: error:", "--batch-size 1000")
    assert not (tmp_path / "report").exists()


def test_the_report_gives_each_subgroup_over_the_seeds_and_marks_the_small_ones():
    """Each seed's subgroup rows (metrics.json, as covid-ddp-evaluate gives them), as the report's
    own rows: mean ± std over the seeds, the widest interval of one, a small one marked."""
    from covid_ddp.evaluation.report import markdown, summarise, summarise_subgroups

    def seed(auc, sensitivity, small_auc):
        row = {"n": 300, "n_per_class": {"covid": 100, "non_covid": 200}, "roc_auc": auc, "sensitivity": sensitivity,
               "specificity": 0.9, "threshold": 0.5, "ci95": {"roc_auc": [auc - 0.05, auc + 0.02]}}
        sex = {"F": {"n": 150, "n_per_class": {"covid": 50, "non_covid": 100}, "roc_auc": auc, "sensitivity": sensitivity,
                     "specificity": 0.9, "ci95": {"roc_auc": [auc - 0.1, auc + 0.05]}, "too_few": False},
               "M": {"n": 12, "n_per_class": {"covid": 4, "non_covid": 8}, "roc_auc": small_auc, "sensitivity": 1.0,
                     "specificity": 0.5, "ci95": {}, "too_few": True}}
        return {**row, "subgroups": {"sex": sex}}

    runs = [seed(0.90, 0.8, 0.7), seed(0.94, 0.9, 0.9)]
    grouped = summarise_subgroups(runs)
    assert grouped["sex"]["F"]["roc_auc"]["mean"] == pytest.approx(0.92)
    assert grouped["sex"]["F"]["roc_auc"]["std"] == pytest.approx(0.0283, abs=1e-4)
    assert grouped["sex"]["F"]["roc_auc"]["interval"] == pytest.approx([0.80, 0.95]), "the widest of one seed"
    assert grouped["sex"]["M"]["too_few"]
    row = {"setting": "patient-level", "recipe": "default", "runs": dict(enumerate(runs)), "summary": summarise(runs),
           "subgroups": grouped}
    table = markdown([row], [1, 2])
    assert "| patient-level | default | sex = F | 150 (50 / 100) | 0.920 ± 0.028 [0.80, 0.95] |" in table
    assert "| patient-level | default | sex = M | 12 (4 / 8) | too few images to say anything |" in table
