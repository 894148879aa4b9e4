"""Honest evaluation end to end: a patient-level run, its threshold, covid-ddp-evaluate, Grad-CAM
overlays, and a real TensorBoard server serving what the run logged."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from conftest import PREDICT_SCRIPT, TRAIN_SCRIPT, clean_env, free_port, refused, run, small_args, write_mcfam
from original_net import Net as OriginalNet
from original_net import trained_like
from sklearn.metrics import roc_auc_score

from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import SplitPlan, make_split
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.models.inference import predict
from covid_ddp.models.loading import inference_model, load_model


@pytest.fixture(scope="module")
def cohort_data(tmp_path_factory):
    """400 synthetic images of 160 patients from two sources, with a meta.npz like real-cxr's."""
    images, labels = make_synthetic(400, seed=3)
    folder = write_mcfam(tmp_path_factory.mktemp("cohort"), images, labels)
    patients = np.arange(400) % 160  # 2-3 images a patient; a patient's images may differ in label
    np.savez(folder / "meta.npz", patient_id=np.array([f"p{p}" for p in patients]),
             dataset=np.where(patients % 4 == 0, "beta", "alpha"))
    return folder


@pytest.fixture(scope="module")
def patient_run(cohort_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("patient_run") / "run"
    run([sys.executable, TRAIN_SCRIPT, *small_args(cohort_data, output_dir, "--group-split", "--bootstrap", "200",
                                                      "--log-every", "2", "--log-images-every", "1")])
    return output_dir


def test_the_run_keeps_a_patient_level_split_it_can_be_audited_with(patient_run, cohort_data):
    config = json.loads((patient_run / "config.json").read_text())
    assert config["config"]["group_split"] is True
    data = load_data_dir(cohort_data)
    expected = make_split(to_binary(data.labels), SplitPlan(group_split=True), data.meta)
    with np.load(patient_run / "splits.npz", allow_pickle=False) as saved:
        for part, rows in expected.as_arrays().items():
            np.testing.assert_array_equal(saved[part], rows)
        patients = [set(data.meta["patient_id"][saved[part]]) for part in ("train", "val", "test")]
    assert not (patients[0] & patients[2] or patients[1] & patients[2] or patients[0] & patients[1])


def _read_predictions(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predictions_csv_holds_every_test_image_and_its_metrics_recompute_with_scikit_learn(patient_run, tmp_path):
    """The table a reviewer asks for: one row an image; the metrics of metrics.json follow from it."""
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

    table = _read_predictions(patient_run / "predictions.csv")
    test = json.loads((patient_run / "metrics.json").read_text())["test"]
    with np.load(patient_run / "splits.npz", allow_pickle=False) as saved:
        assert [int(row["row"]) for row in table] == saved["test"].tolist()
    assert list(table[0]) == ["row", "path", "patient", "source", "label", "p_covid", "call", "threshold"]
    assert all(row["patient"].startswith("p") and row["source"] in ("alpha", "beta") for row in table)
    labels = np.array([row["label"] == "COVID" for row in table], dtype=int)
    calls = np.array([row["call"] == "COVID" for row in table], dtype=int)
    scores = np.array([float(row["p_covid"]) for row in table])
    assert all(float(row["threshold"]) == pytest.approx(test["threshold"], abs=1e-9) for row in table)
    assert np.array_equal(calls, (scores >= test["threshold"]).astype(int))
    assert confusion_matrix(labels, calls).tolist() == test["confusion_matrix"]
    assert accuracy_score(labels, calls) == pytest.approx(test["accuracy"], abs=1e-6)
    assert roc_auc_score(labels, scores) == pytest.approx(test["roc_auc"], abs=1e-6)
    # covid-ddp-evaluate writes the same table for the same weights and split.
    assert evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--bootstrap", "0",
                          "--output-dir", str(tmp_path / "eval")]) == 0
    again = _read_predictions(tmp_path / "eval" / "predictions.csv")
    assert [(r["row"], r["call"]) for r in again] == [(r["row"], r["call"]) for r in table]
    assert max(abs(float(a["p_covid"]) - float(b["p_covid"])) for a, b in zip(again, table)) < 1e-6


def test_the_threshold_is_chosen_on_validation_and_used_for_the_test_metrics(patient_run):
    decision = json.loads((patient_run / "COVID_binary_classifier.json").read_text())
    assert decision["method"] == "youden" and 0 <= decision["threshold"] <= 1
    test = json.loads((patient_run / "metrics.json").read_text())["test"]
    assert test["threshold"] == decision["threshold"]
    low, high = test["ci95"]["sensitivity"]
    assert low <= test["sensitivity"] <= high and test["bootstrap"]["resamples"] == 200


def test_evaluate_rebuilds_the_test_split_and_reproduces_the_run(patient_run, cohort_data, capsys, tmp_path):
    code = evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--data-dir",
                          str(cohort_data), "--bootstrap", "200", "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    test = json.loads((patient_run / "metrics.json").read_text())["test"]
    assert report["metrics"]["confusion_matrix"] == test["confusion_matrix"]
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "brier", "ece"):
        assert report["metrics"][name] == pytest.approx(test[name], abs=2e-3), name
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.png")) == ["calibration.png", "confusion.png",
                                                                        "pr.png", "roc.png"]
    printed = capsys.readouterr().out
    assert "sensitivity" in printed and "95% CI" in printed and "youden on the validation split" in printed


def test_evaluate_refuses_a_split_of_other_data(patient_run, tmp_path, capsys):
    other = write_mcfam(tmp_path / "other", *make_synthetic(400, seed=4))
    code = evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--data-dir",
                          str(other), "--split", "val"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "use --split all" in error


def test_predict_uses_the_stored_threshold_and_writes_gradcam_overlays(patient_run, cohort_data, tmp_path):
    decision = json.loads((patient_run / "COVID_binary_classifier.json").read_text())
    np.savez(tmp_path / "three.npz", train_images=load_data_dir(cohort_data).images[:3])
    result = run([sys.executable, PREDICT_SCRIPT, "--weights", patient_run / "COVID_binary_classifier.pth",
                  "--gradcam", tmp_path / "cam", tmp_path / "three.npz"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert all(r["prediction"] == ("COVID" if float(r["p_covid"]) >= decision["threshold"] else "Non-COVID")
               for r in rows)
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == ["three_0.png", "three_1.png", "three_2.png"]


def test_a_gradcam_overlay_shows_the_input_at_its_own_size_with_a_colour_bar(patient_run, tmp_path, monkeypatch,
                                                                              capsys):
    """A 900x700 JPEG scored by 64 px weights: the overlay shows the 700 px square the model read
    (at most 512 a side) under the heatmap and its 0-1 scale; the scores do not depend on it."""
    from PIL import Image

    from covid_ddp import figures
    from covid_ddp.commands.predict import main as predict_main

    picture = np.random.default_rng(0).integers(0, 256, (700, 900), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "film.jpg", quality=90)
    weights = str(patient_run / "COVID_binary_classifier.pth")
    drawn, real = [], figures.overlay_figure
    monkeypatch.setattr(figures, "overlay_figure", lambda image, heatmap, title: drawn.append(
        (image.shape, heatmap.shape, real(image, heatmap, title))) or drawn[-1][2])
    assert predict_main(["--weights", weights, "--gradcam", str(tmp_path / "cam"), str(tmp_path / "film.jpg")]) == 0
    with_overlay = capsys.readouterr().out
    assert predict_main(["--weights", weights, str(tmp_path / "film.jpg")]) == 0
    assert capsys.readouterr().out == with_overlay, "the same P(COVID) with or without --gradcam"
    ((image_shape, heatmap_shape, figure),) = drawn
    assert image_shape == (512, 512) and heatmap_shape == (64, 64)
    assert len(figure.axes) == 3 and figure.axes[2].get_ylabel() == "Grad-CAM (0-1)", "a colour bar"
    assert (tmp_path / "cam" / "film_0.png").is_file()


def test_tensorboard_grid_gradcam_title_and_predict_call_an_image_alike(patient_run, cohort_data, tmp_path,
                                                                       monkeypatch):
    """One threshold everywhere: the grid TensorBoard draws at the end (the shipped weights, the
    run's threshold), a Grad-CAM overlay's title and covid-ddp-predict's CSV call each image the same."""
    from covid_ddp.commands.predict import main as predict_main
    from covid_ddp.models.loading import load_model
    from covid_ddp.training import board

    decision = json.loads((patient_run / "COVID_binary_classifier.json").read_text())
    weights = patient_run / "COVID_binary_classifier.pth"
    data = load_data_dir(cohort_data)
    targets = to_binary(data.labels)
    with np.load(patient_run / "splits.npz", allow_pickle=False) as saved:
        val_rows = saved["val"]
    captions, titles = [], []
    monkeypatch.setattr(board, "tile_grid", lambda images, heatmaps, text: captions.extend(text) or np.zeros((3, 1, 1)))

    class Writer:  # what the grid is drawn into; the captions are what matters here
        def add_pr_curve(self, *args, **kwargs): ...
        def add_image(self, *args, **kwargs): ...
        def add_figure(self, *args, **kwargs): ...
        def add_hparams(self, *args, **kwargs): ...
        def flush(self): ...

    logger = board.Logger(Writer(), data.images, targets, board.watched_rows(targets, val_rows))
    test = type("Scores", (), {"targets": targets[:4], "p_covid": np.linspace(0.1, 0.9, 4)})
    metrics = {"roc_auc": 0.5, "confusion_matrix": [[1, 1], [1, 1]], "threshold": decision["threshold"],
               "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5}
    logger.final(test, metrics, {}, 1, load_model(weights), decision["threshold"])
    grid_calls = [caption.split("\n")[1].split(":")[0] for caption in captions[: len(logger.watched_images)]]
    assert all(f"{decision['threshold']:.2f}" in caption for caption in captions)

    monkeypatch.setattr("covid_ddp.figures.overlay_figure", lambda image, heatmap, title: titles.append(title))
    monkeypatch.setattr("covid_ddp.figures.save_figure", lambda figure, path: None)
    np.savez(tmp_path / "watched.npz", train_images=logger.watched_images)
    output = tmp_path / "calls.csv"
    assert predict_main(["--weights", str(weights), "--gradcam", str(tmp_path / "cam"), "--output",
                                str(output), str(tmp_path / "watched.npz")]) == 0
    rows = list(csv.DictReader(output.open()))
    predicted = [row["prediction"] for row in rows]
    assert [float(row["threshold"]) for row in rows] == pytest.approx([decision["threshold"]] * len(rows), abs=1e-6)
    assert grid_calls == predicted
    assert [title.split("-> ")[1].split(" (")[0] for title in titles] == predicted
    assert all(f"threshold {decision['threshold']:.3f}" in title for title in titles)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_scalars_images_pr_curves_and_hparams(patient_run):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(patient_run / "tensorboard"),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scalars = _get_json(f"{base}/scalars/tags")
                if scalars:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "tensorboard did not come up"
            time.sleep(0.5)
        scalar_tags = {tag for tags in scalars.values() for tag in tags}
        assert {"epoch/train_loss", "epoch/validation_loss", "epoch/validation_auc", "train/loss"} <= scalar_tags
        assert "epoch/validation_accuracy" not in scalar_tags  # a call at 0.5, not the run's threshold
        image_tags = {tag for tags in _get_json(f"{base}/images/tags").values() for tag in tags}
        assert {"validation/gradcam", "validation/inputs", "shipped/inputs", "shipped/gradcam", "test/roc",
                "test/confusion"} <= image_tags
        pr_tags = {tag for tags in _get_json(f"{base}/pr_curves/tags").values() for tag in tags}
        assert {"validation/pr_curve", "test/pr_curve"} <= pr_tags
        request = urllib.request.Request(f"{base}/hparams/experiment", data=b'{"experimentName": ""}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            experiment = json.loads(response.read())
        assert {"lr", "batch_size", "group_split"} <= {info["name"] for info in experiment["hparamInfos"]}
        assert {"final/roc_auc", "final/sensitivity"} <= {info["name"]["tag"] for info in experiment["metricInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_evaluate_all_scores_every_image_of_a_new_data_set(patient_run, tmp_path, capsys):
    other = write_mcfam(tmp_path / "other", *make_synthetic(90, seed=4))
    code = evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--data-dir", str(other),
                          "--split", "all", "--bootstrap", "0", "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["metrics"]["n"] == 90 and report["rows"] == list(range(90))
    assert "ci95" not in report["metrics"], "--bootstrap 0: no intervals"


def test_resuming_with_other_split_flags_is_refused(patient_run, cohort_data, tmp_path, capsys):
    """Else the new test part would hold images the first epochs trained on."""
    import shutil

    from covid_ddp.commands.train import main as train_main

    run_dir = shutil.copytree(patient_run, tmp_path / "run")
    resume = ["--cpu", "--data-dir", str(cohort_data), "--output-dir", str(run_dir), "--resume", "latest",
              "--epochs", "3", "--batch-size", "40"]  # without --group-split
    code = train_main(resume)
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "--group-split False (the run's: True)" in error
    # Not even on purpose: the split itself is checked against splits.npz.
    code = train_main([*resume, "--resume-with-changes"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "trained on another train/val/test split" in error
    with np.load(run_dir / "splits.npz", allow_pickle=False) as kept, \
            np.load(patient_run / "splits.npz", allow_pickle=False) as original:
        assert all(np.array_equal(kept[part], original[part]) for part in ("train", "val", "test"))


def test_evaluate_without_a_data_dir_uses_the_runs_own_data_and_draws_trainings_intervals(patient_run, tmp_path):
    """One bootstrap rule: the same weights on the same images get training's intervals (the run's seed)."""
    code = evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--bootstrap", "200",
                          "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    test = json.loads((patient_run / "metrics.json").read_text())["test"]
    assert report["metrics"]["confusion_matrix"] == test["confusion_matrix"]
    assert report["metrics"]["ci95"] == test["ci95"] and report["metrics"]["bootstrap"]["seed"] == 1
    code = evaluate_main(["--weights", str(patient_run / "COVID_binary_classifier.pth"), "--bootstrap", "200",
                          "--seed", "7", "--output-dir", str(tmp_path / "eval"), "--split", "test"])
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert code == 0 and report["metrics"]["bootstrap"]["seed"] == 7 and report["metrics"]["ci95"] != test["ci95"]


def test_evaluate_scores_the_rows_of_the_runs_splits_npz_not_a_rebuilt_split(patient_run, tmp_path, monkeypatch,
                                                                             capsys):
    """A scikit-learn upgrade may split otherwise: the run's splits.npz is what evaluate and audit read."""
    import shutil

    from covid_ddp.evaluation import run_data

    monkeypatch.setattr(run_data, "make_split", lambda *args, **kwargs: pytest.fail("the split was rebuilt"))
    run_dir = shutil.copytree(patient_run, tmp_path / "run")
    weights = str(run_dir / "COVID_binary_classifier.pth")
    with np.load(run_dir / "splits.npz", allow_pickle=False) as saved:
        parts = dict(saved)
    assert evaluate_main(["--weights", weights, "--split", "val", "--bootstrap", "0", "--output-dir",
                          str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["rows"] == parts["val"].tolist()
    monkeypatch.undo()  # weights copied with their config.json only: the split is rebuilt from it
    (run_dir / "splits.npz").unlink()
    assert evaluate_main(["--weights", weights, "--split", "val", "--bootstrap", "0", "--output-dir",
                          str(tmp_path / "rebuilt")]) == 0
    assert json.loads((tmp_path / "rebuilt" / "evaluation.json").read_text())["rows"] == parts["val"].tolist()
    np.savez(run_dir / "splits.npz", **{**parts, "test": np.array([0, 10**6])})  # damaged: a row beyond the set
    code = evaluate_main(["--weights", weights, "--bootstrap", "0", "--output-dir", str(tmp_path / "eval2")])
    refused(capsys, code, "splits.npz: no 'test' rows among the 400 images", "--split all")
    assert not (tmp_path / "eval2").exists()


def test_evaluate_gives_rows_per_subgroup_with_intervals_and_marks_the_small_ones(patient_run, tmp_path, capsys):
    """adult-cxr's meta.npz holds sex and age, real-cxr's view: a row per value (ages in bands),
    sensitivity and specificity as counted by hand, a row of 10 images kept and marked."""
    images, labels = make_synthetic(200, seed=8)
    folder = write_mcfam(tmp_path / "clinic", images, labels)
    sex = np.array(["F", "M"] * 95 + ["X"] * 10)
    age = np.r_[np.arange(190) % 90 + 5, np.full(10, 50)]
    np.savez(folder / "meta.npz", sex=sex, age=age, patient_id=np.array([f"p{i // 2}" for i in range(200)]),
             view=np.array(["PA"] * 200))
    weights = str(patient_run / "COVID_binary_classifier.pth")
    code = evaluate_main(["--weights", weights, "--data-dir", str(folder), "--split", "all", "--bootstrap", "100",
                          "--output-dir", str(tmp_path / "eval")])
    assert code == 0 and "per subgroup" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    table = report["subgroups"]
    assert set(table) == {"sex", "age"}, "view has one value: no subgroups; patient ids are no subgroup"
    assert set(table["age"]) == {"0-17", "18-39", "40-59", "60-79", "80+"}
    assert table["sex"]["X"]["too_few"] and table["sex"]["X"]["n"] == 10 and table["sex"]["X"]["ci95"]["sensitivity"] is None
    female = sex == "F"
    table_rows = _read_predictions(tmp_path / "eval" / "predictions.csv")
    calls = np.array([r["call"] == "COVID" for r in table_rows])
    truth = to_binary(labels) == 1
    assert table["sex"]["F"]["sensitivity"] == pytest.approx(calls[female & truth].mean(), abs=1e-9)
    assert table["sex"]["F"]["specificity"] == pytest.approx((~calls[female & ~truth]).mean(), abs=1e-9)
    low, high = table["sex"]["F"]["ci95"]["roc_auc"]
    assert low <= table["sex"]["F"]["roc_auc"] <= high
    from covid_ddp.evaluation.model_card import _evaluation_limitation, _subgroup_section

    card = "\n".join(_subgroup_section({"test": {"subgroups": table}}))
    assert "| sex | X | 10 (" in card and "(too few images to say anything)" in card and "| age | 80+ |" in card
    assert "subgroups only by age, sex (the columns the data holds" in _evaluation_limitation(table), \
        "the card's limitations do not deny the subgroup rows above them"
    assert "the data holds no such fields" in _evaluation_limitation(None)
    code = evaluate_main(["--weights", weights, "--data-dir", str(folder), "--split", "all", "--bootstrap", "0",
                          "--subgroups", "view,height", "--output-dir", str(tmp_path / "eval2")])
    refused(capsys, code, "--subgroups height: no such meta.npz column; the data holds age, sex, view")


def test_a_synthetic_runs_split_is_not_applied_to_other_data(tmp_path):
    from covid_ddp.data.format import RawData
    from covid_ddp.errors import UserError
    from covid_ddp.evaluation.run_data import rows_to_score

    (tmp_path / "config.json").write_text(json.dumps({"config": {"dataset": "synthetic", "seed": 1},
                                                      "data": {"fingerprint": "generator covid_ddp.synthetic"}}))
    other = RawData(np.zeros((10, 64, 64), np.uint8), np.zeros((10, 4), np.float32),
                    {"files": {}, "source": "a folder"})
    with pytest.raises(UserError, match="not the set the run trained on.*use --split all"):
        rows_to_score("test", tmp_path / "COVID_binary_classifier.pth", other)


@pytest.fixture(scope="module")
def original_weights(tmp_path_factory):
    """Weights as the original script writes them: quick, for tests that score with --split all."""
    path = tmp_path_factory.mktemp("original") / "COVID_binary_classifier.pth"
    torch.save(trained_like(OriginalNet(), seed=0).state_dict(), path)
    return path


def evaluate_all(weights, folders, output_dir, *flags) -> dict:
    code = evaluate_main(["--weights", str(weights), "--data-dir", *map(str, folders), "--split", "all",
                          "--bootstrap", "0", "--output-dir", str(output_dir), *flags])
    assert code == 0
    return json.loads((output_dir / "evaluation.json").read_text())


def test_evaluate_scores_each_source_with_the_metrics_it_has_at_the_sets_threshold(original_weights, tmp_path,
                                                                                   capsys):
    images, labels = make_synthetic(120, seed=6)
    targets = to_binary(labels)
    sources = np.where(np.arange(120) < 60, "both", np.where(targets == 1, "covid-only", "normal-only"))
    folder = write_mcfam(tmp_path / "data", images, labels)
    np.savez(folder / "meta.npz", dataset=sources)
    p_covid = predict(inference_model(load_model(original_weights)), images)  # as covid-ddp-evaluate scores
    threshold = float(np.median(p_covid))  # both calls made (at 0.5 these weights call nearly all non-COVID)
    by_source = evaluate_all(original_weights, [folder], tmp_path / "eval", "--threshold", repr(threshold))["per_source"]
    assert list(by_source) == ["both", "covid-only", "normal-only"]
    called = p_covid >= threshold
    for source, row in by_source.items():
        covid, non_covid = (sources == source) & (targets == 1), (sources == source) & (targets == 0)
        assert row["n"] == (sources == source).sum()
        assert row["n_per_class"] == {"covid": covid.sum(), "non_covid": non_covid.sum()}
        assert row["accuracy"] == pytest.approx((called == targets)[sources == source].mean())
        assert row["sensitivity"] == (pytest.approx(called[covid].mean()) if covid.any() else None), source
        assert row["specificity"] == (pytest.approx(1 - called[non_covid].mean()) if non_covid.any() else None), source
    both = sources == "both"
    assert by_source["both"]["roc_auc"] == pytest.approx(roc_auc_score(targets[both], p_covid[both]))
    assert by_source["covid-only"]["roc_auc"] is None and by_source["normal-only"]["roc_auc"] is None
    printed = capsys.readouterr().out.split("per source")[1].splitlines()
    covid_only = next(line for line in printed if line.startswith("covid-only"))
    count = int((sources == "covid-only").sum())
    sensitivity = by_source["covid-only"]["sensitivity"]
    assert covid_only.split()[1:] == [str(count), f"({count}", "/", "0)", "n/a", f"{sensitivity:.3f}", "n/a",
                                      f"{sensitivity:.3f}"], "ROC AUC, sensitivity, specificity, accuracy"


def test_each_data_folder_is_a_source_and_one_source_has_no_rows_of_its_own(original_weights, tmp_path, capsys):
    images, labels = make_synthetic(60, seed=7)
    north = write_mcfam(tmp_path / "north", images[:40], labels[:40])
    south = write_mcfam(tmp_path / "south", images[40:], labels[40:])
    by_source = evaluate_all(original_weights, [north, south], tmp_path / "two")["per_source"]
    assert {source: row["n"] for source, row in by_source.items()} == {"north": 40, "south": 20}
    assert "per source" in capsys.readouterr().out
    np.savez(north / "meta.npz", dataset=np.full(40, "north"))
    for folders in ([south], [north]):  # no meta.npz; a meta.npz of one source
        assert "per_source" not in evaluate_all(original_weights, folders, tmp_path / f"{folders[0].name}-evaluation")
        assert "per source" not in capsys.readouterr().out


@pytest.mark.parametrize("key, value, fragment", [
    ("val_size", "a", "--val-size must be in [0, 1), got a"),
    ("seed", None, "--seed must be an integer, got None"),
    ("model", 3, "not as covid-ddp-train wrote it"),
    ("image_size", "big", "--image-size must be an integer between 8 and 1024, got big"),
])
def test_a_hand_edited_config_json_is_one_line_naming_it(patient_run, tmp_path, capsys, key, value, fragment):
    run_dir = tmp_path / "run"
    shutil.copytree(patient_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "evaluation-*"))
    recorded = json.loads((run_dir / "config.json").read_text())
    recorded["config"][key] = value
    (run_dir / "config.json").write_text(json.dumps(recorded))
    assert evaluate_main(["--weights", str(run_dir / "COVID_binary_classifier.pth"), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json: not as covid-ddp-train wrote it" in err and fragment in err, err
