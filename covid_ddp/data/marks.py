"""Marks of the kind publications draw on figures, stamped on training images of BOTH classes
(``--augment-marks``), so that "has an arrow, a letter or a box" stops predicting COVID.

Why: in the public COVID sets, COVID images are often crops of journal figures, with arrows,
panel letters, boxes and borders on them, and the non-COVID images are clean hospital
exports. Grad-CAM of a model trained on such data lights up the marks on COVID images. Stamped
at random on every class, the marks carry no label information, and a model that still uses
them pays for it in training loss.

Per image, with probability ``probability``, one to four marks among: a line or arrow shaft,
a rectangle outline, a short string of letters and digits (rendered once with Pillow's
built-in font: its glyphs depend on the Pillow version), a border band on one side; each
white or black. Batched on the batch's device, drawn from the caller's generator (the
``augment`` stream), so a resumed run (same Pillow) redraws them exactly.
"""

from __future__ import annotations

import functools
import string

import numpy as np
import torch

GLYPH_BANK = 48  # distinct text stamps, rendered once per device


def add_marks(images: torch.Tensor, generator: torch.Generator | None = None, probability: float = 0.5) -> torch.Tensor:
    """Float images (N, 1, H, W) in 0-255 -> the same with marks stamped on a random subset."""
    count, _, height, width = images.shape
    device = images.device
    uniform = lambda *shape: torch.rand(*shape, device=device, generator=generator)  # noqa: E731
    chosen = uniform(count) < probability
    kinds = (uniform(count, 4) < 0.4) & chosen[:, None]  # line, box, text, border
    kinds[:, 0] |= chosen & ~kinds.any(dim=1)  # a chosen image gets at least one mark
    yy, xx = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    draw = (lambda n: _lines(uniform, yy, xx, n), lambda n: _boxes(uniform, yy, xx, n),
            lambda n: _text(uniform, n, height, width, device), lambda n: _borders(uniform, yy, xx, n))
    marked = images.clone()
    for kind, drawer in enumerate(draw):
        rows = kinds[:, kind].nonzero().flatten()  # only the images that get this mark: most get none
        if not len(rows):
            continue
        mask = drawer(len(rows)).unsqueeze(1)
        white = uniform(len(rows)) < 0.6
        colour = torch.where(white, 225 + 30 * uniform(len(rows)), 25 * uniform(len(rows))).view(-1, 1, 1, 1)
        marked[rows] = marked[rows] * (1 - mask) + colour * mask
    return marked


def _lines(uniform, yy, xx, count):
    """Segments of 12-40 px, 1-2.5 px thick, anywhere: arrow shafts and pointer lines."""
    start = uniform(count, 2) * torch.tensor([yy.shape[0], yy.shape[1]], device=yy.device)
    angle, length = uniform(count) * 2 * np.pi, 12 + 28 * uniform(count)
    direction = torch.stack([torch.sin(angle), torch.cos(angle)], dim=1)
    to_point = torch.stack([yy, xx])[None] - start[:, :, None, None]  # (N, 2, H, W)
    along = (to_point * direction[:, :, None, None]).sum(1).clamp(min=0)
    along = torch.minimum(along, length.view(-1, 1, 1))
    nearest = start[:, :, None, None] + direction[:, :, None, None] * along[:, None]
    distance = (torch.stack([yy, xx])[None] - nearest).norm(dim=1)
    thickness = 0.5 + 0.75 * uniform(count)
    return (distance <= thickness.view(-1, 1, 1)).float()


def _boxes(uniform, yy, xx, count):
    """Rectangle outlines 10-40 px a side, 1-2 px thick: the boxes drawn around findings."""
    size = 10 + 30 * uniform(count, 2)
    corner = uniform(count, 2) * (torch.tensor([yy.shape[0], yy.shape[1]], device=yy.device) - size)
    thickness = 1 + uniform(count).round()
    top, left = corner[:, 0].view(-1, 1, 1), corner[:, 1].view(-1, 1, 1)
    bottom, right = top + size[:, 0].view(-1, 1, 1), left + size[:, 1].view(-1, 1, 1)
    inside = (yy >= top) & (yy <= bottom) & (xx >= left) & (xx <= right)
    t = thickness.view(-1, 1, 1)
    core = (yy >= top + t) & (yy <= bottom - t) & (xx >= left + t) & (xx <= right - t)
    return (inside & ~core).float()


def _text(uniform, count, height, width, device):
    """A string of 1-5 letters or digits from the bank, moved anywhere it fits whole."""
    bank, extents = _glyph_bank(height, width, str(device))
    pick = (uniform(count) * len(bank)).long().clamp(max=len(bank) - 1)
    room = torch.tensor([height, width], device=device) - extents[pick]  # (count, 2): free rows, columns
    shifts = (uniform(count, 2) * room.clamp(min=0)).long().tolist()
    return torch.stack([torch.roll(bank[index], (dy, dx), dims=(0, 1))
                        for index, (dy, dx) in zip(pick.tolist(), shifts)])


@functools.lru_cache(maxsize=4)
def _glyph_bank(height: int, width: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(GLYPH_BANK, H, W) masks of short strings in the top-left corner, from a fixed seed, and
    each one's (height, width) extent."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    font = ImageFont.load_default()
    alphabet = string.ascii_uppercase + string.digits
    masks = []
    for _ in range(GLYPH_BANK):
        text = "".join(rng.choice(list(alphabet), size=rng.integers(1, 6)))
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font)
        masks.append(np.asarray(canvas) > 127)
    bank = np.stack(masks)
    extents = [(rows.nonzero()[0].max() + 1, columns.nonzero()[0].max() + 1) if mask.any() else (0, 0)
               for mask in bank for rows, columns in [(mask.any(axis=1), mask.any(axis=0))]]
    return (torch.tensor(bank, dtype=torch.float32, device=device),
            torch.tensor(extents, dtype=torch.float32, device=device))


def _borders(uniform, yy, xx, count):
    """A band 2-8 px wide along one side: the frame or padding of a cropped figure."""
    width = (2 + 6 * uniform(count)).view(-1, 1, 1)
    side = (uniform(count) * 4).long().clamp(max=3).view(-1, 1, 1)
    height_px, width_px = yy.shape
    bands = torch.stack([yy < width, yy >= height_px - width, xx < width, xx >= width_px - width], dim=1)
    return bands[torch.arange(count, device=yy.device), side.view(-1)].float()
