"""The duplicate search as it was before it stopped comparing every pair: the reference the
tests hold ``covid_ddp.data.duplicates.find_duplicates`` to (the same pairs)."""

from __future__ import annotations

import numpy as np

from covid_ddp.data.duplicates import NEAR_SIMILARITY, first_copies, standardised


def exhaustive_pairs(images: np.ndarray, threshold: float = NEAR_SIMILARITY) -> dict[tuple[int, int], float]:
    """(first, second) -> cosine of every exact (1.0) and near pair, comparing all of them."""
    copy_of = first_copies(images)
    pairs = {(int(first), row): 1.0 for row, first in enumerate(copy_of) if first != row}
    unit, _ = standardised(images)
    for start in range(0, len(unit), 1024):
        similarity = unit[start : start + 1024] @ unit[start:].T
        for row, column in zip(*np.nonzero(similarity > threshold)):
            first, second = start + int(row), start + int(column)
            if column > row and copy_of[first] != copy_of[second]:
                pairs[(first, second)] = float(similarity[row, column])
    return pairs
