"""The duplicate search finds the same pairs as comparing every pair, without doing so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from exhaustive_duplicates import exhaustive_pairs  # noqa: E402

from covid_ddp.data import duplicates  # noqa: E402
from covid_ddp.data.duplicates import find_duplicates  # noqa: E402
from covid_ddp.data.store import load_array  # noqa: E402
from covid_ddp.data.synthetic import make_synthetic  # noqa: E402

# The real sets beside the project (../shared/data), or where COVID_DDP_SHARED_DATA says.
SHARED_DATA = [Path(os.environ.get("COVID_DDP_SHARED_DATA", ROOT.parent / "shared" / "data")),
               Path("/work/shared/data")]


def found(images) -> dict[tuple[int, int], float]:
    return {(pair.first, pair.second): pair.similarity for pair in find_duplicates(images)}


def assert_same_pairs(images):
    reference, pairs = exhaustive_pairs(images), found(images)
    assert set(pairs) == set(reference)
    assert all(abs(pairs[key] - reference[key]) < 1e-4 for key in pairs)
    return pairs


def real_images(name: str) -> np.ndarray:
    for folder in SHARED_DATA:
        if (folder / name / "train_images64.npz").is_file():
            return load_array(folder / name / "train_images64.npz", "train_images")
    pytest.skip(f"the shared {name} set is not on this machine")


@pytest.mark.parametrize("names", [("real-cxr",), ("adult-cxr",), ("real-cxr", "adult-cxr")])
def test_the_real_sets_give_the_pairs_of_the_exhaustive_search(names):
    assert_same_pairs(np.concatenate([real_images(name) for name in names]))


def test_planted_copies_are_found_and_only_they(monkeypatch):
    images, _ = make_synthetic(1200, seed=5)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(images), 12, replace=False)
    images[rows[1]] = images[rows[0]]  # exact
    images[rows[3]] = np.clip(images[rows[2]].astype(int) + 5, 0, 255)  # brighter
    images[rows[5]] = np.clip(images[rows[4]].astype(int) + rng.integers(-4, 5, (64, 64)), 0, 255)  # noisier
    images[rows[7]] = np.roll(images[rows[6]], 1, axis=1)  # shifted by a pixel
    images[rows[8]] = images[rows[9]] = 128  # flat ones: exact copies of each other, nobody's near copy
    monkeypatch.setattr(duplicates, "_CHUNK_PIXELS", 500 * 64 * 64)  # several chunks of images
    monkeypatch.setattr(duplicates, "_PAIRS", 500)  # and of candidates
    monkeypatch.setattr(duplicates, "_BLOCK_ROWS", 256)  # and of signatures compared
    monkeypatch.setattr(duplicates, "_WINDOW_ROWS", 300)
    pairs = assert_same_pairs(images)
    for first, second in (rows[0:2], rows[2:4], rows[4:6], rows[8:10]):
        assert (min(first, second), max(first, second)) in pairs
    assert pairs[tuple(sorted(rows[0:2]))] == 1.0


@pytest.mark.parametrize("block, window", [(2048, 16384), (37, 50), (1, 7)])
def test_close_pairs_are_every_pair_within_the_radius_and_only_they(monkeypatch, block, window):
    """The sorted sweep against all pairs' distances, with blocks and windows that end anywhere;
    points of one first coordinate (ties) and a pair apart along that coordinate alone included."""
    rng = np.random.default_rng(3)
    points = rng.normal(scale=0.3, size=(600, 4)).astype(np.float32)
    points[:40, 0] = points[40:80, 0]  # ties along the sorted coordinate
    points[100] = points[99] + np.array([0.199, 0, 0, 0], dtype=np.float32)  # the far end of a window
    monkeypatch.setattr(duplicates, "_BLOCK_ROWS", block)
    monkeypatch.setattr(duplicates, "_WINDOW_ROWS", window)
    close = {tuple(pair) for pair in duplicates._close_pairs(points, 0.2).tolist()}
    distances = np.linalg.norm(points[:, None].astype(np.float64) - points[None], axis=2)
    first, second = np.nonzero(np.triu(distances <= 0.2, k=1))
    expected = set(zip(first.tolist(), second.tolist()))
    assert all(abs(distances[pair] - 0.2) < 1e-5 for pair in close ^ expected), "the same pairs (float32 aside)"
    assert (99, 100) in close and 100 < len(close) < 600 * 599 / 2 / 10, "pairs to find and many to leave out"


def test_large_images_are_compared_at_64_and_exact_copies_at_full_size():
    images = np.repeat(np.repeat(make_synthetic(300, seed=6)[0], 2, axis=1), 2, axis=2)
    images[7] = images[3]
    images[8] = images[4]
    images[8, 0, 0] ^= 1  # one pixel apart: near at 64, not exact at 128
    assert_same_pairs(images)
    exact = {(pair.first, pair.second): pair.exact for pair in find_duplicates(images)}
    assert exact[(3, 7)] and not exact[(4, 8)]
