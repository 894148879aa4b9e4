"""Exact and near duplicates among radiographs (compared at 64x64 at most), found without
comparing every pair.

Public chest X-ray sets copy each other, and one figure is often published twice: a
duplicate across train and test inflates every score. The rule is the shared real sets'
(their READMEs): exact = identical arrays; near = cosine similarity above 0.985 between
standardised images (each image minus its mean, over its norm), which survives re-encoding,
small crops and contrast changes. Larger images are compared at 64x64 (area means), so the
threshold means what it did on the 64 px sets; exact copies are found at full size.

How, without an N x 4096 copy of the set (MIMIC-CXR holds 377,000 images):

* exact copies: a 16-byte digest per image, one pass;
* near copies: each standardised image u (4096 values of unit length) is projected on
  ``SIGNATURE_DIMS`` orthonormal directions P (the main directions of a sample of the set).
  A projection never lengthens a difference, ``|P(u - v)| <= |u - v|``, and for unit vectors
  ``|u - v|^2 = 2 - 2 cos(u, v)``: every pair above the threshold lies within
  ``sqrt(2 (1 - threshold))`` of each other in the projection. Those close pairs (the candidates:
  a superset, whatever P is) are listed exactly by ``_close_pairs``, and each is confirmed with the
  exact cosine: the same pairs as comparing all of them, holding N x 64 floats, not N x 4096.

Why no tree: radiographs are alike. On the benchmark's synthetic films the main direction's spread
(0.12) is below the search radius (0.17), on the real sets only twice it; a k-d tree then prunes
little and costs more than comparing (59 s against 11 s for 100,000 films). ``_close_pairs``
compares the signatures sorted along the main direction, each block against those within the radius
of it along that direction, in matrix products of 66 values a pair instead of 4096. The time still
grows with N squared where the films are that alike
(docs/performance.md#how-each-stage-grows-from-10000-to-400000-images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NEAR_SIMILARITY = 0.985
COMPARED_SIZE = 64
SIGNATURE_DIMS = 64  # directions a candidate is found in: 64 leave almost none false (32: 60 times more)
_SAMPLE = 4096  # images the directions are learnt from
_CHUNK_PIXELS = 4096 * 64 * 64  # read and pooled at a time: 4096 images of 64 px, 334 of 224 px (64 MB as floats)
_PAIRS = 4096  # candidate pairs confirmed at a time: at most 2 x 4096 standardised images (134 MB)
_BLOCK_ROWS, _WINDOW_ROWS = 2048, 16384  # signatures compared at a time: 2048 x 16384 distances (134 MB)
_SLACK = 1e-3  # relative margin on the candidate radius, for float32 rounding


@dataclass(frozen=True)
class DuplicatePair:
    first: int  # row of the earlier image
    second: int  # row of the later copy
    similarity: float  # cosine similarity of the standardised images, rounded to 4 decimals
    exact: bool  # identical pixels


def find_duplicates(images, threshold: float = NEAR_SIMILARITY) -> list[DuplicatePair]:
    """Every pair (i < j) of identical images, and of images more similar than ``threshold``.
    ``images``: (N, S, S) uint8, in memory or mapped (read ``_CHUNK_PIXELS`` at a time)."""
    directions = _directions(images)
    copy_of, signatures = _scan(images, directions)
    pairs = [DuplicatePair(int(first), row, 1.0, True) for row, first in enumerate(copy_of) if first != row]
    for first, second, similarity in _near_pairs(images, signatures, copy_of, threshold):
        pairs.append(DuplicatePair(first, second, round(similarity, 4), False))
    return sorted(pairs, key=lambda p: (p.first, p.second))


def first_copies(images) -> np.ndarray:
    """Row -> the first row holding the same pixels (exact copies only: one pass, no comparison)."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(digest, row) for row, digest in enumerate(_digests(images))], dtype=np.int64)


def _digests(images):
    step = _rows_at_a_time(images)
    for start in range(0, len(images), step):
        yield from map(_digest, np.asarray(images[start : start + step]))


def _rows_at_a_time(images) -> int:
    return max(1, _CHUNK_PIXELS // (images.shape[-1] * images.shape[-2]))


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


def _scan(images, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass: each row's first exact copy, and its signature (the projection of its
    standardised image; NaN for a flat image, which has no direction and is nobody's near copy)."""
    seen: dict[bytes, int] = {}
    copy_of = np.empty(len(images), dtype=np.int64)
    signatures = np.empty((len(images), directions.shape[1]), dtype=np.float32)
    for start in range(0, len(images), _rows_at_a_time(images)):
        chunk = np.asarray(images[start : start + _rows_at_a_time(images)])
        for row, image in enumerate(chunk, start):
            copy_of[row] = seen.setdefault(_digest(image), row)
        unit, flat = standardised(chunk)
        signatures[start : start + len(chunk)] = unit @ directions
        signatures[start + np.flatnonzero(flat)] = np.nan
    return copy_of, signatures


def _directions(images) -> np.ndarray:
    """(4096, SIGNATURE_DIMS) orthonormal columns: the main directions of an evenly spaced sample
    (any orthonormal set keeps the search exact; the main ones make the fewest false candidates)."""
    rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), _SAMPLE)).astype(np.int64))
    unit = _standardised_rows(images, rows)
    unit = torch.from_numpy(unit - unit.mean(axis=0))
    dims = min(SIGNATURE_DIMS, *unit.shape)
    with torch.random.fork_rng(devices=[]):  # the same directions every time, the caller's stream untouched
        torch.manual_seed(0)
        _, _, v = torch.svd_lowrank(unit, q=dims, niter=3)
    basis = torch.linalg.qr(v[:, :dims].double())[0].float().numpy()  # orthonormal to float precision
    return np.ascontiguousarray(np.pad(basis, ((0, 0), (0, SIGNATURE_DIMS - dims))))


def _near_pairs(images, signatures: np.ndarray, copy_of: np.ndarray, threshold: float):
    """(first, second, cosine) of every near pair that is not two exact copies of one image."""
    usable = np.flatnonzero(~np.isnan(signatures[:, 0]))
    radius = np.sqrt(2 * (1 - threshold)) * (1 + _SLACK)
    candidates = usable[_close_pairs(signatures[usable], radius)]
    candidates = candidates[copy_of[candidates[:, 0]] != copy_of[candidates[:, 1]]]  # exact ones are paired above
    candidates = candidates[np.lexsort((candidates[:, 1], candidates[:, 0]))]
    for start in range(0, len(candidates), _PAIRS):
        block = candidates[start : start + _PAIRS]
        rows, where = np.unique(block, return_inverse=True)
        unit = _standardised_rows(images, rows)
        where = where.reshape(block.shape)
        similarity = np.einsum("ij,ij->i", unit[where[:, 0]], unit[where[:, 1]])
        for (first, second), value in zip(block[similarity > threshold], similarity[similarity > threshold]):
            yield int(first), int(second), float(value)


def _close_pairs(points: np.ndarray, radius: float) -> np.ndarray:
    """(K, 2) rows (i < j) of every pair of ``points`` within ``radius`` of each other, exactly.

    The points are sorted along their first coordinate; each block of ``_BLOCK_ROWS`` is compared
    with the points from its own first up to its last's coordinate plus ``radius`` (no point further
    along can be that close), ``_WINDOW_ROWS`` at a time. One matrix product gives a block's squared
    distances, ``|x|^2 + |y|^2 - 2 x.y``, from rows with two coordinates appended; only the rows of a
    block whose nearest point is close enough are searched for it."""
    order = np.argsort(points[:, 0], kind="stable")
    ordered = torch.from_numpy(np.ascontiguousarray(points[order], dtype=np.float32))
    along = ordered[:, 0].numpy()
    squares = (ordered.double() ** 2).sum(dim=1).float()[:, None]
    ones = torch.ones_like(squares)
    left, right = torch.cat([-2 * ordered, squares, ones], dim=1), torch.cat([ordered, ones, squares], dim=1)
    limit = radius**2
    buffer = torch.empty(min(_BLOCK_ROWS, len(points)) * min(_WINDOW_ROWS, len(points)))  # (written over: no new pages)
    found = [torch.empty((0, 2), dtype=torch.int64)]
    for start in range(0, len(points), _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, len(points))
        end = int(np.searchsorted(along, along[stop - 1] + radius, side="right"))
        for first in range(start, end, _WINDOW_ROWS):
            last = min(first + _WINDOW_ROWS, end)
            block = buffer[: (stop - start) * (last - first)].view(stop - start, last - first)
            torch.mm(left[start:stop], right[first:last].T, out=block)
            rows = torch.nonzero(block.amin(dim=1) <= limit)[:, 0]  # (rare: most rows have no close point)
            if len(rows):
                row, column = torch.nonzero(block[rows] <= limit, as_tuple=True)
                pair = torch.stack([rows[row] + start, column + first], dim=1)
                found.append(pair[pair[:, 1] > pair[:, 0]])
    return np.sort(order[torch.cat(found).numpy()], axis=1)


def _standardised_rows(images, rows: np.ndarray) -> np.ndarray:
    """``standardised`` of ``images[rows]`` (sorted), read and pooled ``_CHUNK_PIXELS`` at a time."""
    step = _rows_at_a_time(images)
    return np.concatenate([standardised(np.asarray(images[rows[start : start + step]]))[0]
                           for start in range(0, len(rows), step)]) if len(rows) else np.empty((0, COMPARED_SIZE**2))


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


def standardised(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, 4096) float32 rows of unit length, each image zero-mean first; (N,) True where an image
    is flat (one gray level): its row stays 0)."""
    flat = _at_most_compared_size(images).reshape(len(images), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat /= np.where(norms > 0, norms, 1)
    return flat, norms[:, 0] == 0


def _at_most_compared_size(images: np.ndarray) -> np.ndarray:
    """``images`` as they are up to 64x64; larger ones as the area means of a 64x64 grid."""
    if images.shape[-1] <= COMPARED_SIZE:
        return images
    return F.adaptive_avg_pool2d(torch.from_numpy(images.astype(np.float32)).unsqueeze(1), COMPARED_SIZE)[:, 0].numpy()
