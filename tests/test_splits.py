"""Splits that do not leak: patient-level, leave-one-source-out, excluded sources."""

from __future__ import annotations

import numpy as np
import pytest

from covid_ddp.data.folders import _merged_copy_groups
from covid_ddp.data.format import RawData
from covid_ddp.data.stratified import stratified_split
from covid_ddp.data.splits import SplitPlan, copy_group_count, make_split, split_groups, split_indices
from covid_ddp.errors import UserError


@pytest.fixture(scope="module")
def cohort():
    """600 images of 200 patients (1-5 images each) from three sources; COVID by patient."""
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(200), rng.integers(1, 6, 200))[:600]
    patients = np.concatenate([patients, np.arange(200, 200 + 600 - len(patients))])
    covid_patient = rng.random(patients.max() + 1) < 0.3
    targets = covid_patient[patients].astype(np.int64)
    sources = np.array(["alpha", "beta", "gamma"])[patients % 3]
    meta = {"patient_id": np.array([f"p{p}" for p in patients]), "dataset": sources}
    return targets, meta


def test_image_level_split_is_the_original_70_30():
    targets = np.arange(1000) % 4 == 0
    split = split_indices(targets.astype(np.int64), 0.3, 0.0)
    assert len(split.test) == 300 and len(split.val) == 0
    assert targets[split.test].mean() == pytest.approx(0.25, abs=0.01), "stratified"


@pytest.mark.parametrize("count, classes, fraction", [(10000, 2, 0.3), (7000, 2, 0.1), (1001, 2, 0.3), (37, 2, 0.3),
                                                      (500, 4, 0.3), (97, 3, 0.15), (6, 2, 0.5)])
def test_our_stratified_split_is_scikit_learns_row_for_row(count, classes, fraction):
    """The split is written out (no scikit-learn import at start-up): the same rows as
    ``train_test_split`` for the same seed, tied remainders included."""
    from sklearn.model_selection import train_test_split

    for seed in (42, 0, 7):
        labels = np.random.default_rng(seed + count).integers(0, classes, count)
        labels[:classes] = labels[classes : 2 * classes] = np.arange(classes)  # two of each class at least
        rows = np.arange(count) * 3 + 5
        expected = train_test_split(rows, test_size=fraction, random_state=seed, stratify=labels)
        got = stratified_split(rows, fraction, seed, stratify=labels)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("labels, fraction, expected", [
    ([0, 0, 0, 1], 0.5, "a class has only 1 member"),
    ([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], 0.1, "a part of 1 cannot hold each of the 2 classes"),
    ([0, 1, 0, 1], 0.99, "0.99 of 4 leaves an empty part")])
def test_our_stratified_split_refuses_what_scikit_learn_refuses(labels, fraction, expected):
    from sklearn.model_selection import train_test_split

    with pytest.raises(ValueError):
        train_test_split(np.arange(len(labels)), test_size=fraction, random_state=42, stratify=labels)
    with pytest.raises(ValueError, match=expected):
        stratified_split(np.arange(len(labels)), fraction, 42, stratify=np.array(labels))


def test_no_patient_is_in_two_parts(cohort):
    targets, meta = cohort
    split = make_split(targets, SplitPlan(group_split=True), meta)
    parts = [set(meta["patient_id"][rows]) for rows in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(len(targets)))
    assert 0.2 < len(split.test) / len(targets) < 0.4
    assert abs(targets[split.test].mean() - targets.mean()) < 0.08, "stratified by patient"


def test_a_held_out_source_is_the_whole_test_set(cohort):
    targets, meta = cohort
    split = make_split(targets, SplitPlan(group_split=True, holdout_source="beta"), meta)
    assert set(meta["dataset"][split.test]) == {"beta"}
    assert (meta["dataset"] == "beta").sum() == len(split.test)
    assert "beta" not in set(meta["dataset"][np.concatenate([split.train, split.val])])


def test_excluded_sources_are_in_no_part(cohort):
    targets, meta = cohort
    split = make_split(targets, SplitPlan(group_split=True, exclude_sources=("alpha",)), meta)
    used = np.concatenate([split.train, split.val, split.test])
    assert "alpha" not in set(meta["dataset"][used])
    assert len(used) == (meta["dataset"] != "alpha").sum()


@pytest.mark.parametrize("plan, meta_keys, message", [
    (SplitPlan(group_split=True), (), "--group-split needs per-image 'patient_id' values: put a meta.npz"),
    (SplitPlan(holdout_source="delta"), ("dataset",), "no images of source 'delta'"),
    (SplitPlan(holdout_source="beta", exclude_sources=("beta",)), ("dataset",), "also excluded"),
])
def test_impossible_plans_are_refused_with_the_fix(cohort, plan, meta_keys, message):
    targets, meta = cohort
    with pytest.raises(UserError, match=message):
        make_split(targets, plan, {key: meta[key] for key in meta_keys} if meta_keys else None)


def test_asking_for_a_patient_split_without_patient_ids_is_one_line(small_data, tmp_path, capsys):
    from covid_ddp.commands.train import main as train_main

    code = train_main(["--cpu", "--data-dir", str(small_data), "--output-dir", str(tmp_path / "run"), "--group-split"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "put a meta.npz with a 'patient_id' array" in error
    assert not (tmp_path / "run" / "splits.npz").exists()


def _parts_of_each_group(split, groups: np.ndarray) -> list[set]:
    part_of = {int(row): name for name, rows in split.as_arrays().items() for row in rows}
    return [{part_of[row] for row in np.flatnonzero(groups == group) if row in part_of} for group in np.unique(groups)]


def test_copies_under_other_names_never_straddle_a_split(cohort):
    """40 images copied under other names (and other patients' ids): each copy lands beside its original."""
    targets, meta = cohort
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (len(targets), 8, 8), dtype=np.uint8)
    originals, copies = rng.choice(300, 40, replace=False), np.arange(560, 600)
    images[copies], targets = images[originals], targets.copy()
    targets[copies] = targets[originals]
    data = RawData(images, np.eye(4, dtype=np.float32)[targets * 2], meta=meta)
    groups = split_groups(data)
    assert copy_group_count(groups) == (40, 80)
    for plan in (SplitPlan(), SplitPlan(group_split=True), SplitPlan(group_split=True, val_size=0.2)):
        split = make_split(targets, plan, meta, groups)
        assert split.copy_groups == (40, 80)
        assert all(len(parts) == 1 for parts in _parts_of_each_group(split, groups)), plan
        if plan.group_split:  # a copy under another patient's id pulls that patient along
            patients = np.unique(meta["patient_id"], return_inverse=True)[1]
            assert all(len(parts) == 1 for parts in _parts_of_each_group(split, patients))
    # Without copies nothing changes: the original's image-level split, row for row.
    unique = RawData(images[:560], data.labels[:560])
    assert split_groups(unique) is None
    plain = make_split(targets[:560], SplitPlan(), None, split_groups(unique))
    assert np.array_equal(plain.test, split_indices(targets[:560], 0.3, 0.1).test)


def test_copy_groups_of_a_prepared_folder_are_read_and_joined_across_folders():
    """meta.npz's duplicate_group (near copies prepare found) counts; rows of a second folder are offset."""
    images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 2, 2)  # no exact copies at all
    data = RawData(images, np.zeros((6, 4), np.float32), meta={"duplicate_group": np.array([0, 0, 2, 3, 2, 5])})
    assert list(split_groups(data)) == [0, 0, 2, 3, 2, 5]
    halves = [RawData(images[:3], data.labels[:3], meta={"duplicate_group": np.array([0, 0, 2])}),
              RawData(np.stack([images[3], images[3], images[5]]), data.labels[:3])]  # exact copies, no meta
    assert list(_merged_copy_groups(halves)) == [0, 0, 2, 3, 3, 5]
