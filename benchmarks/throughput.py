"""Throughput: the original single-script recipe vs covid_ddp's trainer, in one run, same data.

    python benchmarks/throughput.py                       # CPU, batch 100, median of 3 repeats
    python benchmarks/throughput.py --steps 50 --repeats 5 --device cuda

(a) is a faithful re-implementation of the original: a per-item ``Dataset`` that converts
each image to float and takes the one-hot argmax, ``DataLoader(num_workers=1)``, fp32,
Adam, batch 100. (b) is covid_ddp's own loaders and ``train_one_epoch`` / ``evaluate``
(one process). Both train the same ``Net`` on the same synthetic images. Printed: training
and evaluation images/s (median of the repeats, warm-up excluded), the projected training
time of a 10-epoch MCFAM-shaped run (7,000 images an epoch) and the ratio (b)/(a).
Not a test: the machine is shared and noisy, so only ratios from one run mean much.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from covid_ddp.config import TrainConfig
from covid_ddp.data import Split, to_binary
from covid_ddp.model import Net
from covid_ddp.synthetic import make_synthetic
from covid_ddp.train import (build_accelerator, build_model, evaluate, make_loaders, train_one_epoch,
                             with_device_defaults)

MCFAM_TRAIN_IMAGES_PER_EPOCH = 7000


class OriginalDataset(torch.utils.data.Dataset):
    """As the original script: one Python call per image, one-hot argmax per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.tensor(self.images[index], dtype=torch.float32).unsqueeze(0)
        label = 1 if int(np.argmax(self.labels[index])) >= 2 else 0
        return image, label


def original_recipe(images, labels, args, device) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of the original recipe."""
    train_set = OriginalDataset(images[: args.batch_size * (args.steps + 3)], labels)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=1)
    torch.manual_seed(1)
    model = Net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = None
    for step, (batch, target) in enumerate(loader):
        if step == 3:  # warm-up excluded (worker start, first allocations)
            _sync(device)
            started = time.perf_counter()
        batch, target = batch.to(device), target.to(device)
        optimizer.zero_grad()
        F.nll_loss(model(batch), target).backward()
        optimizer.step()
    _sync(device)
    train_rate = args.batch_size * args.steps / (time.perf_counter() - started)

    eval_loader = torch.utils.data.DataLoader(OriginalDataset(images[: args.eval_images], labels),
                                              batch_size=args.batch_size, num_workers=1)
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for batch, target in eval_loader:
            model(batch.to(device)).argmax(dim=1).eq(target.to(device)).sum().item()
    return train_rate, args.eval_images / (time.perf_counter() - started)


def covid_ddp_trainer(images, labels, args, accelerator) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of covid_ddp's loaders and loop."""
    config = with_device_defaults(TrainConfig(cpu=accelerator.device.type == "cpu", batch_size=args.batch_size,
                                              log_every=10**9), accelerator)
    rows = np.arange(args.batch_size * args.steps)
    split = Split(train=rows, val=np.empty(0, dtype=np.int64), test=np.arange(args.eval_images))
    train_loader, _, eval_loader = make_loaders(torch.from_numpy(images), torch.from_numpy(to_binary(labels)), split,
                                                config, accelerator.num_processes)
    torch.manual_seed(1)
    model = build_model(config, accelerator.device, normalization=(0.0, 1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    train_one_epoch(model, optimizer, train_loader, accelerator, config, 1, len(rows))  # warm-up
    _, train_rate = train_one_epoch(model, optimizer, train_loader, accelerator, config, 2, len(rows))
    started = time.perf_counter()
    evaluate(model, eval_loader, accelerator)
    return train_rate, args.eval_images / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=100, help="training batch size for both")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    parser.add_argument("--eval-images", type=int, default=3000, help="images scored in the evaluation timing")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both run")
    args = parser.parse_args()

    needed = max(args.batch_size * (args.steps + 3), args.eval_images)
    images, labels = make_synthetic(needed, seed=0)
    accelerator = build_accelerator(TrainConfig(cpu=args.device == "cpu"))
    device = accelerator.device
    results = {"original": [], "covid_ddp": []}
    for _ in range(args.repeats):
        results["original"].append(original_recipe(images, labels, args, device))
        results["covid_ddp"].append(covid_ddp_trainer(images, labels, args, accelerator))

    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats (median)")
    medians = {name: [statistics.median(r[i] for r in runs) for i in (0, 1)] for name, runs in results.items()}
    print(f"{'':<12}{'train img/s':>14}{'eval img/s':>14}{'10-epoch MCFAM (s)':>22}")
    for name, (train_rate, eval_rate) in medians.items():
        projected = 10 * MCFAM_TRAIN_IMAGES_PER_EPOCH / train_rate
        print(f"{name:<12}{train_rate:>14.0f}{eval_rate:>14.0f}{projected:>22.1f}")
    (train_a, eval_a), (train_b, eval_b) = medians["original"], medians["covid_ddp"]
    print(f"ratio covid_ddp / original: training {train_b / train_a:.2f}x, evaluation {eval_b / eval_a:.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
