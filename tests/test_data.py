"""Labels, splits, validation of MCFAM-format files and the synthetic generator."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_mcfam
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import split_indices
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.data.tensors import pixel_statistics
from covid_ddp.errors import UserError


def test_one_hot_classes_map_to_covid_binary():
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3, 0]]
    np.testing.assert_array_equal(to_binary(labels), [0, 0, 1, 1, 1, 0])


def test_split_is_70_30_stratified_then_validation_from_train():
    targets = np.array([0] * 600 + [1] * 400)
    split = split_indices(targets, test_size=0.3, val_size=0.1)
    assert (len(split.train), len(split.val), len(split.test)) == (630, 70, 300)
    parts = np.concatenate([split.train, split.val, split.test])
    assert sorted(parts.tolist()) == list(range(1000)), "parts are disjoint and cover the data"
    for part in (split.train, split.val, split.test):
        assert targets[part].mean() == pytest.approx(0.4, abs=0.01), "stratified by class"
    assert np.array_equal(split_indices(targets, 0.3, 0.1).test, split.test), "random_state 42 is fixed"


def test_val_size_zero_trains_on_the_whole_70_percent():
    split = split_indices(np.array([0, 1] * 50), test_size=0.3, val_size=0)
    assert (len(split.train), len(split.val), len(split.test)) == (70, 0, 30)


def test_single_class_data_is_refused():
    with pytest.raises(UserError, match="at least 2 of each class"):
        split_indices(np.zeros(50, dtype=np.int64), 0.3, 0.1)


def test_pixel_statistics_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 64, 64), dtype=np.uint8)
    rows = np.arange(0, 50, 2)
    mean, std = pixel_statistics(images, rows, chunk=7)
    assert mean == pytest.approx(images[rows].mean())
    assert std == pytest.approx(images[rows].std())


GOOD_IMAGES = np.zeros((6, 64, 64), dtype=np.uint8)
GOOD_LABELS = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 2]]


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((6, 32, 32), np.uint8), GOOD_LABELS, "train_images64.npz: its name says 64x64 but it holds 32x32 "
         "images; rename it train_images32.npz"),
        (np.zeros((6, 64, 32), np.uint8), GOOD_LABELS, r"train_images64.npz: images must have shape \(N, S, S\), square"),
        (np.zeros((6, 64, 64, 3), np.uint8), GOOD_LABELS, "images must have shape"),
        (np.zeros((6, 64, 64), np.float32), GOOD_LABELS, "images must be uint8"),
        (GOOD_IMAGES, np.zeros((6, 3), np.float32), r"train_labels.npz: labels must have shape \(N, 4\)"),
        (GOOD_IMAGES, np.vstack([GOOD_LABELS[:5], [[1, 1, 0, 0]]]), "1 label rows are not one-hot.*first bad row: 5"),
        (GOOD_IMAGES, np.vstack([GOOD_LABELS[:4], np.zeros((2, 4))]), "2 label rows are not one-hot.*first bad row: 4"),
        (GOOD_IMAGES, GOOD_LABELS[:5], "6 images but 5 labels"),
    ],
)
def test_invalid_files_are_refused_naming_file_and_problem(tmp_path, images, labels, message):
    write_mcfam(tmp_path, images, labels)
    with pytest.raises(UserError, match=message):
        load_data_dir(tmp_path)


def test_missing_key_lists_the_keys_found(tmp_path):
    write_mcfam(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    np.savez(tmp_path / "train_images64.npz", images=GOOD_IMAGES)
    with pytest.raises(UserError, match=r"no array named 'train_images' \(found: images\)"):
        load_data_dir(tmp_path)


def test_pickled_object_arrays_are_refused(tmp_path):
    write_mcfam(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    np.savez(tmp_path / "train_images64.npz", train_images=np.array([object()] * 3, dtype=object))
    with pytest.raises(UserError, match="object array; pickled data is refused"):
        load_data_dir(tmp_path)


def test_good_files_load_with_provenance(tmp_path):
    write_mcfam(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    data = load_data_dir(tmp_path)
    assert data.images.shape == (6, 64, 64) and data.labels.shape == (6, 4)
    assert len(data.provenance["files"]["train_images64.npz"]["sha256"]) == 64


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(3000, seed=0)


def test_synthetic_set_has_the_mcfam_format_and_is_deterministic(synthetic):
    images, labels = synthetic
    assert images.shape == (3000, 64, 64) and images.dtype == np.uint8
    assert labels.shape == (3000, 4) and set(labels.sum(axis=1)) == {1.0}
    again_images, again_labels = make_synthetic(3000, seed=0)
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    assert not np.array_equal(images[:10], make_synthetic(10, seed=1)[0])


def test_synthetic_mean_pixel_value_does_not_predict_the_label(synthetic):
    images, labels = synthetic
    targets = to_binary(labels)
    means = images.reshape(len(images), -1).mean(axis=1, keepdims=True)
    train_x, test_x, train_y, test_y = train_test_split(means, targets, test_size=0.3, random_state=42)
    assert LogisticRegression().fit(train_x, train_y).score(test_x, test_y) < 0.6


def test_synthetic_labels_carry_about_two_percent_noise():
    """Regenerate the clean classes with the same seed to count the flipped labels."""
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 4, size=6000)
    _, labels = make_synthetic(6000, seed=7)  # the flip rate's standard error here is 0.2 points
    flipped = (to_binary(labels) != (clean >= 2)).mean()
    assert 0.01 < flipped < 0.03


def test_an_empty_or_misnamed_store_is_one_line_naming_it(tmp_path):
    images, labels = make_synthetic(20, seed=1)
    write_mcfam(tmp_path / "empty", images, labels)
    (tmp_path / "empty" / "train_images64.npz").unlink()
    (tmp_path / "empty" / "train_images64.npy").write_bytes(b"")
    with pytest.raises(UserError, match=r"train_images64.npy: not a readable image store \(EOFError"):
        load_data_dir(tmp_path / "empty")
    write_mcfam(tmp_path / "renamed", images, labels)
    (tmp_path / "renamed" / "train_images64.npz").rename(tmp_path / "renamed" / "train_images64.npy")
    with pytest.raises(UserError, match="an .npz archive named like a store; name it train_images64.npz"):
        load_data_dir(tmp_path / "renamed")


def test_the_same_folder_twice_is_named_as_such(tmp_path):
    from covid_ddp.data.folders import load_data_dirs

    images, labels = make_synthetic(20, seed=1)
    folder = write_mcfam(tmp_path / "a", images, labels)
    with pytest.raises(UserError, match="is given twice"):
        load_data_dirs([folder, tmp_path / "." / "a"])
