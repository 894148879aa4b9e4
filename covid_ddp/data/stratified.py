"""The stratified shuffle split of the original script (scikit-learn's ``train_test_split(...,
stratify=...)``), written out: the same rows for the same seed, without importing scikit-learn
(a second of every run's start-up). ``tests/test_splits.py`` holds it to scikit-learn's own.
"""

from __future__ import annotations

import math

import numpy as np


def stratified_split(values: np.ndarray, test_size: float, seed: int,
                     stratify: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) parts of ``values``: ``test_size`` of them (rounded up) held out, each class of
    ``stratify`` in proportion, as ``train_test_split(values, test_size=test_size,
    random_state=seed, stratify=stratify)`` returns them. ValueError where it would raise
    one (in words of our own)."""
    values = np.asarray(values)
    count = len(values)
    n_test = math.ceil(test_size * count)
    n_train = count - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"{test_size} of {count} leaves an empty part")
    _, class_of = np.unique(stratify, return_inverse=True)
    class_counts = np.bincount(class_of)
    if class_counts.min() < 2:
        raise ValueError("a class has only 1 member; a stratified split needs 2 of each")
    for size in (n_train, n_test):
        if size < len(class_counts):
            raise ValueError(f"a part of {size} cannot hold each of the {len(class_counts)} classes")
    members = np.split(np.argsort(class_of, kind="mergesort"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)  # the draws below, in scikit-learn's order
    train_per_class = _approximate_mode(class_counts, n_train, rng)
    test_per_class = _approximate_mode(class_counts - train_per_class, n_test, rng)
    train, test = [], []
    for rows, n_train_here, n_test_here in zip(members, train_per_class, test_per_class):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:n_train_here])
        test.extend(shuffled[n_train_here : n_train_here + n_test_here])
    return values[rng.permutation(train)], values[rng.permutation(test)]


def _approximate_mode(class_counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``draws`` each class gets: its share rounded down, the rest to the largest
    remainders (ties broken at random)."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), missing)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return floored.astype(int)
