"""The data as training reads it: one uint8 tensor (on the device when it fits), the rows of a part
as a torch Dataset, the training split's intensity statistics, blank images.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

STATISTICS_CHUNK_PIXELS = 2**22  # 32 MiB as int64, whatever the image size


def pixel_statistics(images: np.ndarray, rows: np.ndarray, chunk: int | None = None) -> tuple[float, float]:
    """Mean and std of the pixels of ``images[rows]`` (uint8), exact: integer sums of the values
    and their squares over chunks of ``chunk`` rows (no float copy of the set, and a bounded
    int64 one: 1024 rows at 224 px would be 400 MB)."""
    chunk = chunk or max(1, STATISTICS_CHUNK_PIXELS // (images.shape[1] * images.shape[2]))
    total = total_sq = 0
    for start in range(0, len(rows), chunk):
        block = images[rows[start : start + chunk]].reshape(-1).astype(np.int64)
        total += int(block.sum())
        total_sq += int(block @ block)
    count = len(rows) * images.shape[1] * images.shape[2]
    mean = total / count
    std = max((total_sq - total * total / count) / count, 0.0) ** 0.5
    return mean, max(std, 1e-6)


def blank_rows(images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``images`` (all, or ``rows``) whose image is a single gray level: nothing in
    them to read. In chunks of STATISTICS_CHUNK_PIXELS (a mapped store is read, not copied)."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    chunk = max(1, STATISTICS_CHUNK_PIXELS // (images.shape[1] * images.shape[2]))
    blank = []
    for start in range(0, len(rows), chunk):
        block = np.asarray(images[rows[start : start + chunk]]).reshape(-1, images.shape[1] * images.shape[2])
        blank.append(rows[start : start + chunk][block.min(axis=1) == block.max(axis=1)])
    return np.concatenate(blank) if blank else np.empty(0, dtype=np.int64)


def wants_device(images: np.ndarray, targets: np.ndarray, device: torch.device, mode: str) -> bool:
    """--data-on-device: 'yes', 'no', or 'auto' (on the device when it is the CPU, whose memory
    the set is already in, or when the set takes under a quarter of the free GPU memory). On
    the device, training batches are cut there (``loader.TrainingLoader``); left in host memory,
    a DataLoader gathers them."""
    return mode == "yes" or (mode == "auto" and _fits_on(device, images.nbytes + targets.nbytes))


def dataset_tensors(images: np.ndarray, targets: np.ndarray, device: torch.device, on_device: bool):
    """The uint8 set and its targets as tensors, moved to ``device`` once or left in host memory
    (a mapped store stays mapped: the tensor shares its read-only pages, nothing is written to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = torch.from_numpy(images), torch.from_numpy(targets)
    # On the CPU the set is where it should be already. (accelerate's device of a multi-process
    # CPU job is cpu:0, and .to("cpu:0") copies: a second copy of the set in every process, and
    # a mapped store copied out of the page cache.)
    if not on_device or torch.device(device).type == "cpu":
        return tensors
    return tuple(t.to(device) for t in tensors)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free / 4


class XrayDataset(torch.utils.data.Dataset):
    """Rows ``rows`` of a uint8 image tensor shared by all parts (no copy per split).

    Yields ``(image uint8 (1, 64, 64), target int64, row index)``. ``__getitems__``
    fetches a whole batch with one tensor index instead of one Python call a
    sample, on whatever device the tensors live (see ``dataset_tensors``); the row
    index lets tests check sharding and lets predictions be traced.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, rows: np.ndarray):
        self.images, self.targets = images, targets
        self.rows = torch.as_tensor(rows, dtype=torch.int64).to(images.device)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = self.rows[position]
        return self.images[row].unsqueeze(0), self.targets[row], row

    def __getitems__(self, positions: list[int]):
        return self.batch(torch.as_tensor(positions, dtype=torch.int64, device=self.rows.device))

    def batch(self, positions: torch.Tensor):
        """The images, targets and rows at ``positions`` (a tensor on the set's device), in one index each."""
        rows = self.rows[positions]
        return self.images.index_select(0, rows).unsqueeze(1), self.targets.index_select(0, rows), rows


def collate_batch(batch):
    """``__getitems__`` already returns a batch; accept single samples too (default path)."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)
