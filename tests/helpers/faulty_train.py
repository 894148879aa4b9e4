"""Run covid_ddp training with injected faults, as a real run would meet them.

Usage: faulty_train.py FAULT[,FAULT...] [covid-ddp-train flags...]
  nan:N      the N-th training loss (counting from 1 over the whole run) is NaN
  slowsave:N the N-th file a checkpoint writes takes 3 s longer (a window to kill the run in)
  termsave:N the main process signals SIGTERM (as sigterm does) as it writes the N-th checkpoint file
  figure:N   the N-th TensorBoard image grid fails to draw (as a broken Pillow install would)
  sigterm:N  after the N-th training step of this run, the main process sends SIGTERM to its
             launcher (which forwards it to every worker), or to itself without one, and waits
             a second for it to arrive: a stop at a known step, whatever the machine's load
  slowval:N  the N-th validation pass takes a second a batch (a long one, whatever the machine's
             speed), and the main process signals SIGTERM (as sigterm does) inside it, after its first batch
  slowsteps:N every training step after the N-th takes 0.25 s longer (an epoch wide enough to be
             inside of, whatever the machine's speed)
  blowup:N   after the N-th epoch the learning rate jumps to 0.05 (a run that diverges later
             on: its best validation epoch is N, not the last)
  stall:R    rank R reads its data for a minute (a slow disk) while the others, done, wait for it
             inside a collective; each rank first writes its pid to <--output-dir>.rank<N>.pid
  float64    train in float64 (with --mixed-precision no): no float32 round-off, which Adam's
             first steps turn into whole learning-rate steps on parameters whose true gradient
             is zero (the conv biases before BatchNorm), so runs that split batches otherwise
             (another process count) can be compared to 1e-6
"""

import os
import signal
import sys
import time

import torch
import torch.nn.functional as F

from covid_ddp.commands.train import main
from covid_ddp.training import board, checkpoint, engine, trainer


def after_calls(count: str, action):
    """A wrapper factory: ``action()`` runs on the ``count``-th call of the wrapped function."""
    state = {"calls": 0}

    def wrap(real):
        def wrapper(*args, **kwargs):
            state["calls"] += 1
            return action(real, args, kwargs, state["calls"] == int(count))
        return wrapper
    return wrap


def nan(count):
    real = F.nll_loss
    calls = {"n": 0}

    def nll_loss(log_probs, targets, *args, **kwargs):
        loss = real(log_probs, targets, *args, **kwargs)
        if log_probs.requires_grad:  # training steps only, not evaluation
            calls["n"] += 1
            if calls["n"] == int(count):
                return loss * float("nan")
        return loss

    F.nll_loss = nll_loss


def slowsave(count):
    def save(real, args, kwargs, now):
        if now:
            time.sleep(3)
        return real(*args, **kwargs)

    checkpoint.save_torch = after_calls(count, save)(checkpoint.save_torch)


def termsave(count):
    def save(real, args, kwargs, now):
        if now:
            _send_sigterm()
        return real(*args, **kwargs)

    checkpoint.save_torch = after_calls(count, save)(checkpoint.save_torch)


def figure(count):
    def tile_grid(real, args, kwargs, now):
        if now:
            raise OSError("injected: Pillow cannot load its default font")
        return real(*args, **kwargs)

    board.tile_grid = after_calls(count, tile_grid)(board.tile_grid)


def sigterm(count):
    def add(real, args, kwargs, now):
        real(*args, **kwargs)
        if now:
            _send_sigterm()

    engine.StepTally.add = after_calls(count, add)(engine.StepTally.add)


def _send_sigterm() -> None:
    """From the main process: to the launcher (which forwards it to every worker), or to itself."""
    if os.environ.get("RANK", "0") == "0":
        launched = "TORCHELASTIC_RUN_ID" in os.environ
        os.kill(os.getppid() if launched else os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the launcher forwards it to every worker meanwhile


def slowval(count):
    def slowly(loader):
        for index, batch in enumerate(loader):
            if index == 1:
                _send_sigterm()
            time.sleep(1)
            yield batch

    def evaluate(real, args, kwargs, now):
        if now:
            args = (args[0], slowly(args[1]), *args[2:])
        return real(*args, **kwargs)

    trainer.evaluate = after_calls(count, evaluate)(trainer.evaluate)


def slowsteps(count):
    real, calls = engine.StepTally.add, {"n": 0}

    def add(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > int(count):
            time.sleep(0.25)

    engine.StepTally.add = add


def blowup(count):
    def run_epoch(real, args, kwargs, now):
        result = real(*args, **kwargs)
        if now:
            for group in args[0].optimizer.param_groups:  # args[0]: engine.PreparedRun
                group["lr"] = 0.05
        return result

    trainer.run_epoch = after_calls(count, run_epoch)(trainer.run_epoch)


def stall(rank):
    real = trainer.load_dataset

    def load_dataset(*args, **kwargs):  # called inside distributed.on_every_process
        mine = os.environ.get("RANK", "0")
        output_dir = sys.argv[sys.argv.index("--output-dir") + 1]
        with open(f"{output_dir}.rank{mine}.pid", "w") as handle:
            handle.write(str(os.getpid()))
        if mine == rank:
            time.sleep(60)
        return real(*args, **kwargs)

    trainer.load_dataset = load_dataset


def float64():
    torch.set_default_dtype(torch.float64)


FAULTS = {"nan": nan, "slowsave": slowsave, "slowval": slowval, "termsave": termsave, "figure": figure, "sigterm": sigterm, "slowsteps": slowsteps,
          "blowup": blowup, "stall": stall, "float64": float64}

for fault in sys.argv[1].split(","):
    kind, *count = fault.split(":")
    if kind not in FAULTS:
        raise SystemExit(f"unknown fault {fault}")
    FAULTS[kind](*count)

sys.exit(main(sys.argv[2:]))
