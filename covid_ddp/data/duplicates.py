"""Exact and near duplicates among radiographs (compared at 64x64 at most).

Public chest X-ray sets copy each other, and one figure is often published twice: a
duplicate across train and test inflates every score. The rule is the shared real sets'
(their READMEs): exact = identical 64x64 arrays; near = cosine similarity above 0.985
between standardised images (each image minus its mean, over its std), which survives
re-encoding, small crops and contrast changes. Larger images are compared at 64x64 (area
means), so the threshold means what it did on the 64 px sets; exact copies are found at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NEAR_SIMILARITY = 0.985
_BLOCK = 1024  # rows compared per matrix product: memory is N x 4096 + _BLOCK x N floats
COMPARED_SIZE = 64


@dataclass(frozen=True)
class DuplicatePair:
    first: int  # row of the earlier image
    second: int  # row of the later copy
    similarity: float  # cosine similarity of the standardised images, rounded to 4 decimals
    exact: bool  # identical pixels


def find_duplicates(images: np.ndarray, threshold: float = NEAR_SIMILARITY) -> list[DuplicatePair]:
    """Every pair (i < j) of identical images, and of images more similar than ``threshold``."""
    copy_of = first_copies(images)  # row -> the first row holding the same pixels
    pairs = [DuplicatePair(int(first), row, 1.0, True) for row, first in enumerate(copy_of) if first != row]
    unit = _standardised(images)
    for start in range(0, len(unit), _BLOCK):
        block = unit[start : start + _BLOCK]
        similarity = block @ unit[start:].T  # only j >= i: the lower triangle is the same pairs
        rows, columns = np.nonzero(similarity > threshold)
        for row, column in zip(rows, columns):
            if column <= row:  # the image itself, or a pair already seen from the other side
                continue
            first, second = start + int(row), start + int(column)
            if copy_of[first] != copy_of[second]:  # identical ones are paired with their first copy above
                pairs.append(DuplicatePair(first, second, round(float(similarity[row, column]), 4), False))
    return sorted(pairs, key=lambda p: (p.first, p.second))


def rows_to_drop(pairs: list[DuplicatePair], binary_labels: np.ndarray) -> np.ndarray:
    """The later copy of every pair; both images of a pair whose labels disagree (COVID vs not):
    such a pair cannot be resolved from the pixels, and either label would teach the model noise."""
    dropped = set()
    for pair in pairs:
        dropped.add(pair.second)
        if binary_labels[pair.first] != binary_labels[pair.second]:
            dropped.add(pair.first)
    return np.array(sorted(dropped), dtype=np.int64)


def copy_groups(pairs: list[DuplicatePair], count: int) -> np.ndarray:
    """Each of ``count`` rows' group: the first row of the images it is a copy of, through any chain
    of pairs (a~b and b~c put a, b and c in one group); a row without copies is its own group."""
    group = np.arange(count)
    for pair in sorted(pairs, key=lambda p: p.first):  # (a path halving union-find: pairs are few)
        first, second = _root(group, pair.first), _root(group, pair.second)
        group[max(first, second)] = min(first, second)
    return np.array([_root(group, row) for row in range(count)], dtype=np.int64)


def _root(group: np.ndarray, row: int) -> int:
    while group[row] != row:
        group[row] = group[group[row]]
        row = int(group[row])
    return row


def first_copies(images: np.ndarray) -> np.ndarray:
    """Row -> the first row holding the same pixels (exact copies only: one pass, no comparison)."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(image.tobytes(), row) for row, image in enumerate(images)], dtype=np.int64)


def _standardised(images: np.ndarray) -> np.ndarray:
    """(N, 4096) float32 rows of unit length, each image zero-mean first (a flat image stays 0)."""
    flat = _at_most_compared_size(images).reshape(len(images), -1).astype(np.float32)  # the one N x 4096 copy
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat /= np.where(norms > 0, norms, 1)
    return flat


def _at_most_compared_size(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``images`` as they are up to 64x64; larger ones as the area means of a 64x64 grid."""
    if images.shape[-1] <= COMPARED_SIZE:
        return images
    pooled = [F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).float()
                                    .unsqueeze(1), COMPARED_SIZE)[:, 0].numpy()
              for start in range(0, len(images), chunk)]
    return np.concatenate(pooled)
