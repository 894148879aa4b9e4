"""Several --data-dir folders as one set: sources kept, splits across folders, provenance of every file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TRAIN_SCRIPT, refused, small_args, torchrun, write_mcfam

from covid_ddp.commands.evaluate import main as evaluate_main
from covid_ddp.data.folders import load_data_dirs
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import SplitPlan, make_split, split_groups
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.errors import UserError


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """'hospital' (with meta.npz: two sources, patients, ages) and 'archive' (no meta.npz), which holds
    copies of hospital's first 4 images (as public collections copy each other)."""
    root = tmp_path_factory.mktemp("sets")
    images, labels = make_synthetic(240, seed=5)
    images[160:164], labels[160:164] = images[:4], labels[:4]
    hospital = write_mcfam(root / "hospital", images[:160], labels[:160])
    np.savez(hospital / "meta.npz", dataset=np.array(["north", "south"] * 80),
             patient_id=np.array([f"p{row // 2}" for row in range(160)]), age=np.arange(160) % 90)
    archive = write_mcfam(root / "archive", images[160:], labels[160:])
    return hospital, archive


def test_folders_are_concatenated_and_every_image_keeps_its_source(two_folders):
    hospital, archive = two_folders
    data = load_data_dirs([hospital, archive])
    assert data.images.shape == (240, 64, 64) and data.labels.shape == (240, 4)
    meta = data.meta
    assert list(meta["dataset"][:2]) == ["north", "south"] and set(meta["dataset"][160:]) == {"archive"}
    assert len(set(meta["patient_id"][160:])) == 80, "a folder without meta.npz: one patient per image"
    assert set(meta["age"][160:]) == {""} and list(meta["age"][:3]) == ["0", "1", "2"]
    files = data.provenance["files"]
    assert set(files) == {"hospital/train_images64.npz", "hospital/train_labels.npz", "hospital/meta.npz",
                          "archive/train_images64.npz", "archive/train_labels.npz"}
    assert all(len(entry["sha256"]) == 64 for entry in files.values())


def test_whole_number_columns_of_different_types_stay_whole(tmp_path):
    images, labels = make_synthetic(20, seed=5)
    folders = [write_mcfam(tmp_path / name, images[rows], labels[rows]) for name, rows in (("a", slice(0, 10)),
                                                                                          ("b", slice(10, 20)))]
    np.savez(folders[0] / "meta.npz", year=np.full(10, 2019, dtype=np.int64))
    np.savez(folders[1] / "meta.npz", year=np.full(10, 2020, dtype=np.uint64))
    year = load_data_dirs(folders).meta["year"]
    assert year.dtype == np.int64 and year.tolist() == [2019] * 10 + [2020] * 10, "not 2019.0, as numpy would"


def test_splits_work_across_folders(two_folders):
    data = load_data_dirs(list(two_folders))
    targets = to_binary(data.labels)
    held_out = make_split(targets, SplitPlan(holdout_source="archive"), data.meta)
    assert list(held_out.test) == list(range(160, 240)) and held_out.train.max() < 160
    groups = split_groups(data)
    assert list(np.flatnonzero(groups[:160] != np.arange(160))) == [] and list(groups[160:164]) == [0, 1, 2, 3]
    copies_apart = make_split(targets, SplitPlan(holdout_source="archive"), data.meta, groups)
    assert list(copies_apart.test) == list(range(160, 240)) and copies_apart.train.min() == 4, \
        "the copies of archive's images are in no other part"
    adult_only = make_split(targets, SplitPlan(group_split=True, exclude_sources=("north",)), data.meta)
    used = np.concatenate([adult_only.train, adult_only.val, adult_only.test])
    assert not set(data.meta["dataset"][used]) & {"north"}
    patients = [set(data.meta["patient_id"][part]) for part in (adult_only.train, adult_only.val, adult_only.test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_two_folders_with_one_name_are_refused(tmp_path, two_folders):
    images, labels = make_synthetic(20, seed=1)
    other = write_mcfam(tmp_path / "hospital", images, labels)
    with pytest.raises(UserError, match="share a name"):
        load_data_dirs([two_folders[0], other])


def test_a_two_process_run_on_two_folders_records_them_and_evaluate_reads_its_split(two_folders, tmp_path, capsys):
    hospital, archive = two_folders
    flags = small_args(hospital, tmp_path / "run", "--epochs", "1", "--holdout-source", "archive")
    flags[flags.index("--data-dir") + 1: flags.index("--data-dir") + 2] = [hospital, archive]
    trained = torchrun(2, TRAIN_SCRIPT, flags)
    assert "4 group(s) of copies of one image (8 images) kept together" in trained.stderr
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["data_dir"] == [str(hospital), str(archive)]
    assert len(recorded["data"]["files"]) == 5 and recorded["data"]["split_sizes"]["test"] == 80
    assert recorded["data"]["copies_kept_together"] == {"groups": 4, "images": 8}
    with np.load(tmp_path / "run" / "splits.npz") as parts:
        assert not set(parts["train"]) & {0, 1, 2, 3} and not set(parts["val"]) & {0, 1, 2, 3}
    assert "4 group(s), 8 images, each group in one part" in (tmp_path / "run" / "model_card.md").read_text()
    weights = str(tmp_path / "run" / "COVID_binary_classifier.pth")
    assert evaluate_main(["--weights", weights, "--bootstrap", "0"]) == 0  # (in this process: the command itself)
    evaluation = json.loads((tmp_path / "run" / "evaluation-test" / "evaluation.json").read_text())
    assert evaluation["rows"] == list(range(160, 240))
    # Fewer folders than the run trained on: its split would pick other images, so it is refused.
    code = evaluate_main(["--weights", weights, "--data-dir", str(hospital), "--bootstrap", "0"])
    refused(capsys, code, "the run trained on the folders hospital, archive", "not one folder")
    code = evaluate_main(["--weights", weights, "--data-dir", str(archive), str(hospital), "--bootstrap", "0"])
    refused(capsys, code, "not the folders archive, hospital", "in its order")
