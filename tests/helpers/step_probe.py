"""Gradient sync, accumulation and clipping through covid_ddp's real training path, against plain PyTorch.

Usage (python or torchrun): step_probe.py OUT.json DATA_DIR CASE [CASE ...]

Each case trains one epoch on 120 images with ``training.preparation.prepare_run`` and
``engine.train_one_epoch``, exactly as ``covid-ddp-train`` does (device loader, DDP,
accumulation cycles, clipping), but with SGD: Adam divides each gradient by its own
running scale, which would hide a gradient off by a constant factor (a wrong accumulation
or sync average); SGD's update shows it. Everything runs in float64, which removes the
float32 round-off (and the max-pool near-ties it flips), so the result must equal the
reference to ~1e-10. The reference is independent of covid_ddp's loop: one process, one
plain ``nn.BatchNorm2d`` net, each optimizer step on the whole cycle's images at once
(``loader.epoch_permutation`` gives the epoch's order, as the loader documents).

With frozen BatchNorm (running statistics), micro-batches normalise like one big batch,
which accumulation needs; sync cases use ``--sync-bn`` instead, in training mode.
Rank 0 writes, per case, the largest weight difference to the reference and how far the
weights moved; ``CASES`` names what each case sets.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import split_indices
from covid_ddp.models.net import Net
from covid_ddp.training.config import TrainConfig
from covid_ddp.training.engine import train_one_epoch
from covid_ddp.training.loader import epoch_permutation
from covid_ddp.training.preparation import prepare_run
from covid_ddp.training.session import build_accelerator, shut_down

TRAIN_IMAGES = 120
LR = 0.1
# name: (global batch, accumulation, --max-grad-norm, --sync-bn, frozen BatchNorm)
CASES = {
    "sync": (40, 1, None, True, False),  # 2 x 20 images == 1 x 40, batch statistics over both
    "accumulation": (20, 2, None, False, True),  # 3 cycles of 2 x 20 == 3 steps of 40
    "short_last_cycle": (20, 4, None, False, True),  # 6 micro-steps: a cycle of 4, then one of 2
    "clipping": (20, 2, 0.05, False, True),  # the norm of the cycle's whole (synced) gradient is clipped
    "sync_accumulation_clipping": (20, 4, 0.05, False, True),
}


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm on its running statistics even in training mode (train_one_epoch calls model.train())."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda bn, _: setattr(bn, "training", False))


def covid_ddp_epoch(case: str, data, targets, split):
    """(accelerator, initial weights, weights after one epoch, largest gradient norm seen before clipping)."""
    batch, accumulation, max_norm, sync_bn, frozen = CASES[case]
    config = TrainConfig(batch_size=batch, grad_accum_steps=accumulation, max_grad_norm=max_norm, sync_bn=sync_bn,
                         dropout=0.0, lr=LR, eval_batch_size=60, log_every=1000, mixed_precision="no",
                         image_size=data.image_size)
    accelerator = build_accelerator(config)
    run = prepare_run(config, data, targets, split, accelerator,
                      make_optimizer=lambda model, config, device: torch.optim.SGD(model.parameters(), lr=config.lr))
    model = accelerator.unwrap_model(run.model)
    if frozen:
        freeze_batchnorm(model)
    initial = copy.deepcopy(model.state_dict())
    initial["normalization"] = (float(model.pixel_mean), float(model.pixel_std))  # not in the state_dict
    norms = []
    clip = accelerator.clip_grad_norm_
    accelerator.clip_grad_norm_ = lambda params, limit: norms.append(float(clip(params, limit))) or norms[-1]
    train_one_epoch(run.model, run.optimizer, run.train_loader, accelerator, config, epoch=1)
    return accelerator, initial, copy.deepcopy(model.state_dict()), max(norms, default=0.0)


def reference_epoch(case: str, initial: dict, images, targets, train_rows, seed: int = 1, epoch: int = 1) -> dict:
    """Plain PyTorch: one optimizer step per cycle, on all of the cycle's images at once."""
    batch, accumulation, max_norm, _, frozen = CASES[case]
    model = Net(dropout=0.0)
    model.load_state_dict({k: v for k, v in initial.items() if k != "normalization"})
    model.set_normalization(*initial["normalization"])
    model.train()
    if frozen:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    order = train_rows[epoch_permutation(len(train_rows), seed, epoch)]
    steps = len(train_rows) // batch
    for first in range(0, steps, accumulation):
        rows = order[first * batch : min(first + accumulation, steps) * batch]
        optimizer.zero_grad()
        F.nll_loss(model(images[rows].unsqueeze(1)), targets[rows]).backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
    return model.state_dict()


def main() -> None:
    out, data_dir, cases = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    torch.set_default_dtype(torch.float64)
    data = load_data_dir(data_dir)
    targets = to_binary(data.labels)
    split = split_indices(targets, 0.3, 0.1)
    split.train = split.train[:TRAIN_IMAGES]
    results = {}
    for case in cases:
        accelerator, initial, final, largest_norm = covid_ddp_epoch(case, data, targets, split)
        expected = reference_epoch(case, initial, torch.from_numpy(data.images), torch.from_numpy(targets),
                                   torch.from_numpy(split.train))
        results[case] = {
            "max_difference": max((final[k] - expected[k]).abs().max().item() for k in expected
                                  if expected[k].is_floating_point()),
            "moved": max((final[k] - initial[k]).abs().max().item() for k in final if final[k].is_floating_point()),
            "largest_gradient_norm": largest_norm,
        }
    if accelerator.is_main_process:
        out.write_text(json.dumps(results, indent=1))
    shut_down(accelerator)  # once: it ends the process group every case shared


if __name__ == "__main__":
    main()
