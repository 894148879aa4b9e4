"""Results a reader can defend: the confounding warning, the shortcut audit (at the end of a run and
as covid-ddp-audit), seed ensembles in evaluate and predict, and the run's model card."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import PREDICT_SCRIPT, TRAIN_SCRIPT, run, small_args, write_mcfam

from covid_ddp.commands.audit import main as audit_main
from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.data.confounding import confounding_warning, source_table, table_of
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.evaluation import audit
from covid_ddp.evaluation import audit_reading as reading
from covid_ddp.metrics import binary_metrics, choose_threshold
from covid_ddp.models.inference import predict
from covid_ddp.models.loading import inference_model, load_model
from covid_ddp.training.preparation import announce_sources

WEIGHTS = "COVID_binary_classifier.pth"


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    """400 synthetic images of 160 patients; 'gamma' sent COVID images only, as hannover did."""
    images, labels = make_synthetic(400, seed=3)
    folder = write_mcfam(tmp_path_factory.mktemp("three_sources"), images, labels)
    covid, patients = labels.argmax(1) >= 2, np.arange(400) % 160
    sources = np.where(covid & (patients % 3 == 0), "gamma", np.where(patients % 4 == 0, "beta", "alpha"))
    np.savez(folder / "meta.npz", patient_id=np.array([f"p{p}" for p in patients]), dataset=sources)
    return folder


@pytest.fixture(scope="module")
def seed_runs(three_sources, tmp_path_factory):
    """Two seeds of one patient-level recipe: seed 1 audited at its end (--audit yes), seed 2 not
    (--audit no; what auto decides, from the counts alone, is tested below)."""
    root = tmp_path_factory.mktemp("seeds")
    results = {}
    for seed, audit_flag in ((1, "yes"), (2, "no")):
        results[seed] = run([sys.executable, TRAIN_SCRIPT, *small_args(three_sources, root / f"seed_{seed}", "--group-split",
                                                                       "--seed", str(seed), "--audit", audit_flag,
                                                                       "--bootstrap", "200")])
    return root, results


def test_training_shows_the_sources_and_warns_of_a_source_holding_one_class(seed_runs):
    root, results = seed_runs
    err = results[1].stderr
    assert "training images (patients) per source and class" in err
    assert "covid-ddp-train: warning: gamma: COVID only: a model can score well by recognising the source; see " \
           "covid-ddp-report and covid-ddp-audit" in err
    recorded = json.loads((root / "seed_1" / "config.json").read_text())["data"]["by_source"]
    assert recorded["train"]["gamma"]["non_covid"]["images"] == 0 and recorded["train"]["gamma"]["covid"]["images"] > 0
    parts = ("train", "val", "test")
    assert sum(c["images"] for part in parts for s in recorded[part].values() for c in s.values()) == 400
    assert recorded["all"]["gamma"]["covid"]["images"] == sum(recorded[part]["gamma"]["covid"]["images"] for part in parts)


def test_the_warning_is_silent_without_sources_or_when_every_source_holds_both_classes(capsys):
    targets = np.array([0, 1, 0, 1])
    announce_sources(table_of(None, targets, np.arange(4)))  # no meta.npz: the sources are not known
    assert capsys.readouterr().err == ""
    announce_sources(table_of({"dataset": np.array(["a", "a", "a", "a"])}, targets, np.arange(4)))  # one source
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("covid-ddp-train: warning: every image comes from one source (a): the test figures")
    assert "covid-ddp-evaluate --data-dir OTHER --split all" in line and "'source' column" in line
    both = source_table(np.array(["a", "a", "b", "b"]), targets)
    announce_sources(both)
    err = capsys.readouterr().err
    assert "per source and class" in err and "warning" not in err and confounding_warning(both) is None
    lonely = source_table(np.array(["a", "a", "b", "c"]), np.array([0, 1, 1, 0]))
    assert confounding_warning(lonely).startswith("b: COVID only, c: non-COVID only: ")


def test_the_metrics_resample_patients_and_say_so(seed_runs, three_sources):
    root, _ = seed_runs
    test = json.loads((root / "seed_1" / "metrics.json").read_text())["test"]
    rows = np.load(root / "seed_1" / "splits.npz")["test"]
    patients = np.load(three_sources / "meta.npz")["patient_id"][rows]
    assert test["bootstrap"]["unit"] == "patient" and test["bootstrap"]["units"] == len(set(patients)) < len(rows)
    assert set(test["per_source"]) == {"alpha", "beta", "gamma"} and test["per_source"]["gamma"]["roc_auc"] is None


def test_an_audit_at_the_end_of_a_run_is_written_and_carried_into_the_model_card(seed_runs, three_sources):
    root, results = seed_runs
    report = json.loads((root / "seed_1" / "audit-test" / "audit.json").read_text())
    assert report["images"] == json.loads((root / "seed_1" / "metrics.json").read_text())["test"]["n"]
    assert {"marks", "border", "source_probe", "gradcam"} <= set(report)
    assert report["source_probe"]["COVID"]["sources"].keys() >= {"alpha", "gamma"}
    assert 0 <= report["source_probe"]["COVID"]["roc_auc"] <= 1
    assert (root / "seed_1" / "audit-test" / "audit.png").stat().st_size > 10_000
    card = (root / "seed_1" / "model_card.md").read_text()
    for expected in ("**Not for clinical use.**", "**Confounded:** gamma: COVID only", "Unit: patient",
                     "resamples of", "patients (all films of a drawn patient together)", "## Shortcut audit (test split)",
                     "source probe, COVID", "## CLAIM 2024 checklist", "| 29 | Significance and uncertainty | answered here",
                     "--audit yes", "## Test results per source", "## Limitations"):
        assert expected in card, expected
    # The Hub's front matter, read by a YAML parser: what the run is and what it measured.
    import yaml

    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    test = json.loads((root / "seed_1" / "metrics.json").read_text())["test"]
    assert header["license"] == "other" and "chest-x-ray" in header["tags"] and header["library_name"] == "pytorch"
    assert header["datasets"] == [three_sources.name]
    (result,) = header["model-index"][0]["results"]
    indexed = {metric["type"]: metric["value"] for metric in result["metrics"]}
    assert indexed["roc_auc"] == round(test["roc_auc"], 4) and indexed["specificity"] == round(test["specificity"], 4)
    assert card.split("---\n", 2)[2].lstrip("\n").startswith("# Model card: seed_1")


def test_auto_skips_an_audit_costing_over_a_tenth_of_the_run_with_a_line_saying_how(seed_runs, three_sources,
                                                                                     tmp_path, capsys):
    root, results = seed_runs
    run_dir = shutil.copytree(root / "seed_2", tmp_path / "run")
    data, rows = load_data_dir(three_sources), np.load(run_dir / "splits.npz")["test"]
    # Counted, not timed: the audit's passes against the run's, the same decision on any machine.
    needed = audit.audit_passes(len(rows))
    for trained in (needed, 10 * needed - 1):
        audit.audit_after_training("auto", run_dir / WEIGHTS, data, rows, 0.5, seed=0, trained_passes=trained)
        err = capsys.readouterr().err
        assert f"to this run's work ({len(rows)} test images against {trained:,} image passes of training): run it " \
               f"with covid-ddp-audit --weights {run_dir / WEIGHTS}" in err, trained
    assert not (run_dir / "audit-test").exists()
    sizes = json.loads((run_dir / "config.json").read_text())["data"]["split_sizes"]
    assert audit.training_passes(sizes["train"], sizes["val"], 2) < 10 * needed, "so the run skipped it, as said"
    assert "## Shortcut audit\n\nNot run" in (run_dir / "model_card.md").read_text()
    assert "Not run" in results[2].stdout + (root / "seed_2" / "model_card.md").read_text()
    assert "shortcut audit" not in results[2].stderr, "--audit no: not a word"


def test_covid_ddp_audit_of_a_run_brings_its_card_up_to_date(seed_runs, tmp_path, capsys, monkeypatch):
    root, _ = seed_runs
    run_dir = shutil.copytree(root / "seed_2", tmp_path / "run")
    validation = len(np.load(run_dir / "splits.npz")["val"])
    monkeypatch.setattr(audit, "AUDIT_IMAGES", validation - 7)  # a split over the bound is audited on a sample
    assert audit_main(["--weights", str(run_dir / WEIGHTS), "--split", "val"]) == 0
    out = capsys.readouterr().out
    sample = f"{validation - 7} images ({{}} COVID) of the val split (a random sample of its {validation:,} images, seed 0)"
    recorded = json.loads((run_dir / "audit-val" / "audit.json").read_text())
    assert recorded["images"] == validation - 7 and sample.format(recorded["covid"]) in out
    assert f"{validation - 7} images of the val split (a random sample" in (run_dir / "model_card.md").read_text()
    assert "| border hidden: change of ROC AUC (mean abs change of P(COVID)) |" in out and "**Verdict:** " in out
    assert (run_dir / "audit-val" / "audit.md").is_file()
    recorded = json.loads((run_dir / "audit-val" / "audit.json").read_text())
    assert recorded["verdict"] in out and recorded["readings"]["border"]["level"] in ("none", "weak", "strong")
    assert "## Shortcut audit (val split)" in (run_dir / "model_card.md").read_text()
    assert evaluate_main(["--weights", str(run_dir / WEIGHTS), "--bootstrap", "50"]) == 0
    card = (run_dir / "model_card.md").read_text()
    assert "## Other evaluations" in card and "`evaluation-test` (test of" in card, "evaluate brings the card up to date"
    assert "(95% interval, 50 resamples, seed 2: " in card and "resamples of" in card and ", seed 2" in card, \
        "training's intervals and the evaluation's, each labelled with how it was drawn"
    # A mistake is one line, and nothing is written.
    assert audit_main(["--weights", str(tmp_path / "missing.pth")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "covid-ddp-audit: error:" in err and "Traceback" not in err


def test_the_end_of_training_audit_runs_when_cheap_and_a_failure_is_only_a_warning(seed_runs, three_sources, tmp_path,
                                                                                     capsys):
    root, _ = seed_runs
    run_dir = shutil.copytree(root / "seed_2", tmp_path / "run")
    data, rows = load_data_dir(three_sources), np.load(run_dir / "splits.npz")["test"]
    audit.audit_after_training("auto", run_dir / WEIGHTS, data, rows, 0.5, seed=0,
                               trained_passes=10 * audit.audit_passes(len(rows)))
    assert json.loads((run_dir / "audit-test" / "audit.json").read_text())["images"] == len(rows), "10% of the run"
    audit.audit_after_training("yes", tmp_path / "gone" / WEIGHTS, data, rows, 0.5, seed=0, trained_passes=1)
    err = capsys.readouterr().err
    assert "warning: the shortcut audit failed" in err and err.count("\n") == 1 and "Traceback" not in err


# --- the measurements, on models whose shortcut is known --------------------------------------


class PixelRule(nn.Module):
    """A 'model' whose P(COVID) is a fixed rule of the raw pixels, to check each measurement."""

    def __init__(self, rule):
        super().__init__()
        self.rule, self.anchor = rule, nn.Parameter(torch.zeros(()))  # predict() reads the device from a parameter

    def forward(self, x):
        p = self.rule(x.float()).clamp(1e-4, 1 - 1e-4)
        return torch.log(torch.stack([1 - p, p], dim=1))


def border_mean(x):
    inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
    inside[8:-8, 8:-8] = True
    return x[..., ~inside].mean(dim=(1, 2))


GREY = np.random.default_rng(0).integers(70, 180, (60, 64, 64), dtype=np.uint8)  # no mark-like extremes
TARGETS = np.r_[np.zeros(30, dtype=np.int64), np.ones(30, dtype=np.int64)]


def test_the_border_test_moves_a_border_reader_and_leaves_a_centre_reader_alone():
    images = GREY.copy()
    images[30:, :8] = 250  # the COVID images carry a bright band at the top (it would lift a whole-image median)
    border_reader = PixelRule(lambda x: torch.sigmoid((border_mean(x) - 130) / 5))
    centre_reader = PixelRule(lambda x: torch.sigmoid((x[..., 16:48, 16:48].mean(dim=(1, 2, 3)) - 125) / 5))
    for model, moved in ((border_reader, True), (centre_reader, False)):
        p = predict(model, images)
        result = audit.border_test(model, images, TARGETS, p, 0.5)
        if moved:
            assert result["roc_auc_before"] == 1.0 and result["roc_auc_change"] < -0.3 and result["mean_abs_change"] > 0.2
        else:
            assert result["roc_auc_change"] == 0 and result["mean_abs_change"] == 0
        assert reading.read_border(result).level == ("strong" if moved else "none"), "the scale, set on these two"


def test_the_marks_test_flips_a_model_that_reads_extreme_pixels_and_not_one_that_does_not():
    images = GREY.copy()
    images[:10, 20:44, 20:44] = 255  # 10 non-COVID images the mark reader already calls COVID
    mark_reader = PixelRule(lambda x: ((x >= 225) | (x <= 25)).float().mean(dim=(1, 2, 3)) * 40)
    mean_reader = PixelRule(lambda x: torch.full((len(x),), 0.2))
    for model, flips in ((mark_reader, True), (mean_reader, False)):
        result = audit.marks_test(model, images, TARGETS, predict(model, images), 0.5, seed=0)
        assert result["images"] == 30
        if flips:  # the share is of the 20 called non-COVID, not of all 30
            assert result["called_non_covid"] == 20 and result["flip_share"] == result["flipped_to_covid"] / 20
            assert result["flip_share"] > 0.5 and result["mean_change"] > 0.1
        else:
            assert result["called_non_covid"] == 30 and result["flipped_to_covid"] == 0 and result["mean_change"] == 0
        assert reading.read_marks(result).level == ("strong" if flips else "none")
    assert np.array_equal(audit.with_marks(GREY[:4], 0), audit.with_marks(GREY[:4], 0)), "the same marks for a seed"


def test_the_source_probe_finds_a_source_the_features_encode_and_only_then():
    rng = np.random.default_rng(1)
    sources = np.array(["a", "b"] * 60)
    targets = np.r_[np.zeros(60, dtype=np.int64), np.ones(60, dtype=np.int64)]
    patients = np.arange(120) // 2  # two films a patient, never split across folds
    images = rng.integers(70, 180, (120, 64, 64), dtype=np.uint8)
    noise = rng.normal(size=(120, 40))
    encoded = noise + 3 * (sources == "a")[:, None]
    found = audit.source_probe(encoded, images, targets, sources, patients, seed=0)
    assert found["COVID"]["roc_auc"] > 0.95 and found["non-COVID"]["roc_auc"] > 0.95
    assert 0.3 < found["COVID"]["pixels_roc_auc"] < 0.7, "the pixels carry no source here"
    blind = audit.source_probe(noise, images, targets, sources, patients, seed=0)
    assert 0.3 < blind["COVID"]["roc_auc"] < 0.7
    assert reading.read_probe(found["COVID"]).level == "strong" and reading.read_probe(blind["COVID"]).level == "none"
    three = np.array(["a", "b", "c"] * 40)  # three sources: one against the rest, averaged
    encoded_three = noise + 3 * np.eye(3)[np.arange(120) % 3] @ rng.normal(size=(3, 40))
    assert audit.source_probe(encoded_three, images, targets, three, patients, seed=0)["COVID"]["roc_auc"] > 0.95
    few = audit.source_probe(noise[:30], images[:30], targets[:30], sources[:30], patients[:30], seed=0)
    assert "skipped" in few["non-COVID"] and few["non-COVID"]["sources"] == {"a": 15, "b": 15}, "under 20 a source"
    assert "skipped" in audit.source_probe(noise, images, targets, None, None, seed=0)


def test_the_source_probe_keeps_a_patients_films_in_one_fold():
    """Features that only recognise the person (three films each, one source per patient): folds that
    split a patient would reward it as 'knowing the hospital'; folds by patient see nothing."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 3)
    sources = np.where(patients < 20, "a", "b")
    person = rng.normal(size=(40, 100))[patients] + 0.05 * rng.normal(size=(120, 100))
    targets, images = np.zeros(120, dtype=np.int64), rng.integers(70, 180, (120, 64, 64)).astype(np.uint8)
    grouped = audit.source_probe(person, images, targets, sources, patients, seed=0)["non-COVID"]["roc_auc"]
    by_image = audit.source_probe(person, images, targets, sources, None, seed=0)["non-COVID"]["roc_auc"]
    assert by_image > 0.95 and grouped < 0.75  # (grouped: 0.63 here; 0.34-0.63 over four draws)


def test_the_gradcam_share_of_a_real_model_uses_a_sample_of_256_images():
    from covid_ddp.models.net import Net

    torch.manual_seed(0)
    result = audit.gradcam_mass(Net().eval(), np.random.default_rng(0).integers(0, 256, (300, 64, 64), np.uint8),
                                np.arange(300) % 2, seed=0)
    assert result["images"] == 256 and 0 <= result["inside_share"] <= 1 and result["mean_heatmap"].shape == (64, 64)


def test_the_gradcam_share_counts_heat_inside_the_lung_box(monkeypatch):
    heat = np.zeros((3, 64, 64), dtype=np.float32)
    heat[0, 0:4, 0:4] = 1  # a corner: all outside
    heat[1, 20:40, 20:40] = 1  # the middle: all inside
    monkeypatch.setattr(audit, "gradcam", lambda model, images: heat)  # (no zero heatmap: 3 images, 2 counted)
    result = audit.gradcam_mass(None, np.zeros((3, 64, 64), np.uint8), np.array([0, 1, 1]), seed=0)
    assert result["inside_share_non_covid"] == 0 and result["inside_share_covid"] == 1
    assert result["images_without_heat"] == 1 and result["uniform_share"] == pytest.approx((48 / 64) ** 2)
    uniform = result["uniform_share"]
    for share, level in ((0.0, "strong"), (uniform - 0.05, "weak"), (1.0, "none")):
        assert reading.read_gradcam({"inside_share": share, "uniform_share": uniform}).level == level, share


def test_the_audit_reads_as_one_verdict_and_names_two_readings_that_disagree():
    """The issue's own audit: the border holds nothing (-0.006), yet the heat inside the lung box
    (0.511) is under an even spread's 0.56: one summary line says both, and where to look."""
    report = {"marks": {"flip_share": 0.0, "mean_change": 0.004, "flipped_to_covid": 0, "called_non_covid": 40},
              "border": {"roc_auc_change": -0.006, "mean_abs_change": 0.02},
              "source_probe": {"skipped": "one source"},
              "gradcam": {"inside_share": 0.511, "uniform_share": 0.5625}}
    line = reading.verdict(report)
    assert line.startswith("Weak signs only: Grad-CAM.") and "The border test and Grad-CAM disagree" in line
    assert "audit.png's mean heatmap" in line and "The source probe could not run" in line
    clean = {**report, "gradcam": {"inside_share": 0.75, "uniform_share": 0.5625}}
    assert reading.verdict(clean).startswith("No sign of the shortcuts probed (marks, border, Grad-CAM)")
    assert reading.read_border({"roc_auc_change": -0.03, "mean_abs_change": 0.02}).level == "weak", "between the two"
    assert reading.read_probe({"roc_auc": 0.75, "pixels_roc_auc": 0.9}).level == "weak"
    assert reading.read_gradcam({"inside_share": None, "uniform_share": 0.56}) is None, "no heatmap: no reading"
    marked = {**clean, "marks": {**report["marks"], "flip_share": 0.4, "mean_change": 0.3}}
    assert reading.verdict(marked).startswith("Signs of a shortcut: marks.")


# --- ensembles ---------------------------------------------------------------------------------


def test_an_ensemble_averages_the_runs_and_chooses_its_threshold_on_their_validation_split(seed_runs, three_sources,
                                                                                           tmp_path, capsys):
    root, _ = seed_runs
    paths = [root / f"seed_{seed}" / WEIGHTS for seed in (1, 2)]
    data = load_data_dir(three_sources)
    targets = to_binary(data.labels)
    splits = np.load(root / "seed_1" / "splits.npz")

    def mean_p(rows):
        return np.mean([predict(inference_model(load_model(path)), data.images[rows]) for path in paths], axis=0)

    expected = choose_threshold(mean_p(splits["val"]), targets[splits["val"]])["threshold"]
    assert evaluate_main(["--weights", str(paths[0]), "--weights", str(paths[1]), "--bootstrap", "100"]) == 0
    report = json.loads((root / "ensemble-evaluation-test" / "evaluation.json").read_text())
    assert report["metrics"]["threshold"] == pytest.approx(expected)
    assert "common validation split" in report["threshold_source"] and report["weights"] == list(map(str, paths))
    alone = binary_metrics(mean_p(splits["test"]), targets[splits["test"]], threshold=expected)
    assert report["metrics"]["roc_auc"] == pytest.approx(alone["roc_auc"])
    assert report["metrics"]["bootstrap"]["unit"] == "patient"

    result = run([sys.executable, PREDICT_SCRIPT, "--weights", paths[0], "--weights", paths[1],
                  three_sources / "train_images64.npz"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    np.testing.assert_allclose([float(r["p_covid"]) for r in rows], mean_p(np.arange(400)), atol=2e-6)
    assert [float(r["threshold"]) for r in rows] == pytest.approx([expected] * 400, abs=1e-6)


def test_an_ensemble_of_runs_of_other_splits_is_refused_in_one_line(seed_runs, tmp_path, capsys):
    root, _ = seed_runs
    other = shutil.copytree(root / "seed_2", tmp_path / "other_split")
    saved = dict(np.load(other / "splits.npz"))
    np.savez(other / "splits.npz", train=saved["train"], val=saved["test"], test=saved["val"])  # another split
    code = evaluate_main(["--weights", str(root / "seed_1" / WEIGHTS), "--weights", str(other / WEIGHTS),
                          "--split", "all", "--output-dir", str(tmp_path / "ensemble")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "trained on another split" in err
    assert "an ensemble needs runs of one split" in err and not (tmp_path / "ensemble").exists()
    alone = tmp_path / "alone" / WEIGHTS  # weights without their run folder
    alone.parent.mkdir()
    shutil.copy(root / "seed_1" / WEIGHTS, alone)
    for weights, message in (([root / "seed_1" / WEIGHTS, alone], "its run folder (splits.npz, config.json) is not "
                               "beside it"),
                              ([root / "seed_1" / WEIGHTS, root / "seed_1" / ".." / "seed_1" / WEIGHTS],
                               "the same file is given twice")):
        assert evaluate_main([arg for path in weights for arg in ("--weights", str(path))]) != 0
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    np.savez(other / "splits.npz", **saved)
    config = json.loads((other / "config.json").read_text())
    config["data"]["fingerprint"] = "meta.npz 0000"  # the same rows of other data
    (other / "config.json").write_text(json.dumps(config))
    assert evaluate_main(["--weights", str(root / "seed_1" / WEIGHTS), "--weights", str(other / WEIGHTS)]) != 0
    assert "was trained on other data files than" in capsys.readouterr().err


def test_the_model_card_names_a_single_source():
    from covid_ddp.evaluation.model_card import _data_section

    one = {"covid": {"images": 30, "patients": 20}, "non_covid": {"images": 40, "patients": 40}}
    card = "\n".join(_data_section({"source": "folders", "data_dirs": ["mine"], "by_source": {"all": {"clinic": one}}},
                                   {"dataset": "mcfam"}))
    assert "**One source:** Every image comes from one source (clinic): the test figures measure" in card
    assert "One source" not in "\n".join(_data_section(
        {"source": "folders", "by_source": {"all": {"clinic": one, "archive": one}}}, {}))
