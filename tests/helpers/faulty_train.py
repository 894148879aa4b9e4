"""Run covid_ddp training with one injected fault, as a real run would meet it.

Usage: faulty_train.py FAULT [covid-ddp-train flags...]
  nan:N      the N-th training loss (counting from 1 over the whole run) is NaN
  slowsave:N the N-th file accelerate's save_state writes takes 3 s longer (a window to kill the run in)
  sloweval:N the N-th evaluation pass takes 3 s longer
  figure:N   the N-th TensorBoard image grid fails to draw (as a broken Pillow install would)
"""

import sys
import time

import accelerate.checkpointing
import torch.nn.functional as F

from covid_ddp import train

kind, count = sys.argv[1].split(":")
trigger = int(count)
calls = 0

if kind == "nan":
    real_nll_loss = F.nll_loss

    def nll_loss(log_probs, targets, *args, **kwargs):
        global calls
        loss = real_nll_loss(log_probs, targets, *args, **kwargs)
        if log_probs.requires_grad:  # training steps only, not evaluation
            calls += 1
            if calls == trigger:
                return loss * float("nan")
        return loss

    F.nll_loss = nll_loss
elif kind == "slowsave":
    real_save = accelerate.checkpointing.save

    def save(*args, **kwargs):
        global calls
        calls += 1
        if calls == trigger:
            time.sleep(3)
        return real_save(*args, **kwargs)

    accelerate.checkpointing.save = save
elif kind == "sloweval":
    real_evaluate = train.evaluate

    def evaluate(*args, **kwargs):
        global calls
        calls += 1
        if calls == trigger:
            time.sleep(3)
        return real_evaluate(*args, **kwargs)

    train.evaluate = evaluate
elif kind == "figure":
    from covid_ddp import board

    real_grid = board.tile_grid

    def tile_grid(*args, **kwargs):
        global calls
        calls += 1
        if calls == trigger:
            raise OSError("injected: Pillow cannot load its default font")
        return real_grid(*args, **kwargs)

    board.tile_grid = tile_grid
else:
    raise SystemExit(f"unknown fault {sys.argv[1]}")

sys.exit(train.main(sys.argv[2:]))
