"""Speed: the original single-script recipe vs covid_ddp's trainer, in one run, on the same data.

    python benchmarks/throughput.py                            # CPU: original vs covid_ddp fp32 and bf16
    python benchmarks/throughput.py --scaling --time-to-accuracy
    python benchmarks/throughput.py --device cuda --compile    # GPU: adds bf16 at batch 1024, compiled
    python benchmarks/throughput.py --sync-cost                # what a step spends agreeing across 2 processes
    python benchmarks/throughput.py --model resnet18 --image-size 224   # a backbone: plain loop vs covid_ddp

(a) ``original`` is a faithful re-implementation of the original script: a per-item
``Dataset`` that converts each image to float and takes the one-hot argmax,
``DataLoader(num_workers=1)``, fp32, NCHW, Adam, batch 100; its clock starts once its worker
has started and handed over the first batch, and the share of the timed steps it then spent
waiting for that worker is printed (on a GPU the recipe is bound by it, so the ratios to (a)
measure the host's CPU as much as the device). (b) ``covid_ddp`` runs the
package's own pieces: the device-resident loader, ``train_one_epoch`` and ``evaluate`` of
``covid_ddp.training.engine`` under accelerate (as training runs them, stop-request and NaN checks
included), and the BatchNorm-folded inference model of ``covid-ddp-predict`` fed from the
set on the device (evaluation and inference batch: 1,000 on a GPU, 100 on a CPU). Every
variant runs in its own process (accelerate's state is process-wide), the variants take
turns within each repeat, and the median of the repeats is printed, warm-up (and
compilation) excluded. A variant that fails is a row saying so; the others still run (the
exit status is 1). Printed per variant: training, evaluation and inference images/s, model
FLOP utilisation (MFU: 3 x forward FLOPs x training images/s over this device's matmul peak,
measured in this run in the precision the variant's convolutions compute in: bf16, or for
fp32 on a GPU TF32, cuDNN's default), the projected training time of a 10-epoch MCFAM-shaped
run (7,000 images an epoch; ``benchmarks/gpu_check.py`` times a real one) and the ratios to
(a). On a GPU the variants are bf16 at batch 1024 (the targets' batch), (a), the compiled one
with ``--compile``, then bf16 and fp32 at ``--batch-size``. ``--json`` is rewritten after every
variant. ``--data-dir`` gives every variant one folder's images instead of making synthetic
ones in each. With ``--model``/``--image-size`` (a backbone needs torchvision), (a) is the
plain single-process loop a user would write by hand for that model (the same per-item
``Dataset``, fp32, NCHW, Adam, the same batch) and the defaults shrink to fit a CPU (5 timed
steps after 2, 400 images scored, 2 repeats). ``--scaling`` adds covid_ddp with 1 vs 2 CPU processes (same global batch,
the machine's cores shared out); ``--time-to-accuracy`` trains (a) and (b) on the default
synthetic set until the validation accuracy first reaches 90%.

Not a test: the machine may be shared and noisy, so only ratios from one run mean much.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MCFAM_TRAIN_IMAGES_PER_EPOCH = 7000
TARGET_ACCURACY = 0.90
SYNTHETIC_POOL_PIXELS = 20000 * 64 * 64  # distinct synthetic images generated per variant: 20,000 at 64 px


@dataclass(frozen=True)
class Variant:
    name: str
    trainer: str  # "original" or "covid_ddp"
    precision: str = "fp32"  # fp32 or bf16
    batch_size: int = 100
    compile: bool = False
    processes: int = 1

    def worker_flags(self) -> list[str]:
        return ["--worker", self.trainer, "--precision", self.precision, "--batch-size", str(self.batch_size),
                *(["--compile"] if self.compile else [])]


def model_spec(args):
    from covid_ddp.models.spec import ModelSpec

    return ModelSpec(args.model, args.image_size)


# --- the two trainers (run inside a worker process) ------------------------------------------


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


class OriginalRecipe:
    """The original training loop and its test loop, timed."""

    def __init__(self, images, labels, args, device):
        from covid_ddp.models.net import build_network

        self.images, self.labels, self.args, self.device = images, labels, args, device
        torch.manual_seed(1)
        self.model = build_network(model_spec(args)).to(device)  # the seed's Net, or the same backbone as (b)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train(self, rows: np.ndarray, max_steps: int | None = None) -> tuple[int, float]:
        """(images trained on, seconds) for one pass over ``rows`` (or its first ``max_steps`` batches).

        The clock starts once the first batch is in hand: the DataLoader worker's start-up (a process
        and its imports) is a fixed cost of each pass, not of training. ``self.data_wait`` keeps the
        seconds the loop then spent waiting for that one worker: on a fast GPU the recipe is bound by
        it, so a ratio to this rate measures the host's CPU as much as the device."""
        loader = torch.utils.data.DataLoader(OriginalDataset(self.images[rows], self.labels[rows]),
                                             batch_size=self.args.batch_size, shuffle=True, num_workers=1)
        self.model.train()
        batches = iter(loader)
        steps = len(loader) if max_steps is None else min(max_steps, len(loader))
        pending = next(batches)  # the worker's start-up and first batch, before the clock
        seen, self.data_wait, started = 0, 0.0, time.perf_counter()
        for step in range(steps):
            batch, target = pending[0].to(self.device), pending[1].to(self.device)
            self.optimizer.zero_grad()
            F.nll_loss(self.model(batch), target).backward()
            self.optimizer.step()
            seen += len(target)
            if step + 1 < steps:
                waited = time.perf_counter()
                pending = next(batches)
                self.data_wait += time.perf_counter() - waited
        _sync(self.device)
        return seen, time.perf_counter() - started

    def accuracy(self, rows: np.ndarray) -> tuple[float, float]:
        """(accuracy, images/s) of the original test loop over ``rows``."""
        loader = torch.utils.data.DataLoader(OriginalDataset(self.images[rows], self.labels[rows]),
                                             batch_size=self.args.batch_size, num_workers=1)
        self.model.eval()
        correct, started = 0, time.perf_counter()
        with torch.no_grad():
            for batch, target in loader:
                correct += self.model(batch.to(self.device)).argmax(dim=1).eq(target.to(self.device)).sum().item()
        return correct / len(rows), len(rows) / (time.perf_counter() - started)


class CovidDdpTrainer:
    """covid_ddp's loaders, model, optimizer and loop, prepared by accelerate as ``launch/train.py`` does."""

    def __init__(self, images, labels, split, args):
        from covid_ddp.data.format import to_binary
        from covid_ddp.data.tensors import pixel_statistics
        from covid_ddp.training.config import TrainConfig, settle_batches
        from covid_ddp.training.hardware import tune_backends
        from covid_ddp.training.recipe import make_optimizer
        from covid_ddp.training.preparation import build_model, make_loaders
        from covid_ddp.training.session import build_accelerator

        config = TrainConfig(cpu=args.device == "cpu", batch_size=args.batch_size, model=args.model,
                             mixed_precision="bf16" if args.precision == "bf16" else "no", compile=args.compile)
        self.accelerator = build_accelerator(config)
        self.config = settle_batches(config, len(split.train), self.accelerator.num_processes,
                                     self.accelerator.device.type)[0]
        tune_backends(self.accelerator.device)
        device = self.accelerator.device
        loaders = make_loaders(torch.from_numpy(images).to(device), torch.from_numpy(to_binary(labels)).to(device),
                               split, self.config, num_processes=self.accelerator.num_processes,
                               process_index=self.accelerator.process_index, on_device=True)
        torch.manual_seed(1)
        self.spec = model_spec(args)
        model = build_model(self.config, self.spec, device, pixel_statistics(images, split.train))
        optimizer = make_optimizer(model, self.config, device)
        self.model, self.optimizer, self.eval_loader = self.accelerator.prepare(model, optimizer, loaders[2])
        self.train_loader, self.split, self.images, self.epoch = loaders[0], split, images, 0

    def train(self, max_steps: int | None = None) -> tuple[int, float]:
        """(images trained on by all processes, seconds) for one epoch (or its first ``max_steps`` batches)."""
        from covid_ddp.training.engine import train_one_epoch
        from covid_ddp.training.interrupt import GracefulStop

        self.epoch += 1
        loader = self.train_loader
        if max_steps is not None:
            loader = dataclasses.replace(loader, rows=loader.rows[: max_steps * loader.batch_size])
        started = time.perf_counter()
        with GracefulStop() as stopper:  # as training runs it: stop requests and NaN checks included
            train_one_epoch(self.model, self.optimizer, loader, self.accelerator, self.config, self.epoch,
                            stopper=stopper)
        _sync(self.accelerator.device)
        return len(loader) * loader.batch_size, time.perf_counter() - started

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, images/s) of ``covid_ddp.training.engine.evaluate`` over the evaluation rows."""
        from covid_ddp.training.engine import evaluate

        started = time.perf_counter()
        result = evaluate(self.model, self.eval_loader, self.accelerator)
        return result.accuracy(0.5), len(result.rows) / (time.perf_counter() - started)

    def inference(self, rows: np.ndarray) -> float:
        """Images/s of the shipped inference path: the consolidated weights, BatchNorm folded, channels_last."""
        from covid_ddp.models.inference import predict
        from covid_ddp.models.net import build_network, for_inference, weights_state_dict
        from covid_ddp.models.weights import consolidated_state_dict

        net = build_network(self.spec)
        # keep_torch_compile=False: a compiled model unwraps to its Net, so the normalisation is folded
        # into conv1 as the weights file has it (a compiled wrapper is not a Net, and was not folded).
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        net.load_state_dict(weights_state_dict(consolidated_state_dict(self.accelerator.get_state_dict(self.model)),
                                               unwrapped))
        model = for_inference(net.to(self.accelerator.device).eval())
        images = torch.from_numpy(self.images[rows]).to(self.accelerator.device)
        batch = self.config.eval_batch_size
        with self.accelerator.autocast():  # the images stay on the device: predict takes tensors anywhere
            predict(model, images[:batch], batch)  # warm-up
            _sync(self.accelerator.device)
            started = time.perf_counter()
            predict(model, images, batch)
        _sync(self.accelerator.device)
        return len(rows) / (time.perf_counter() - started)

    def close(self) -> None:
        """Drop the DDP wrapper and end the process group while Python is alive (see training.session.shut_down)."""
        from covid_ddp.training.session import shut_down

        accelerator = self.accelerator
        del self.model, self.optimizer, self.eval_loader, self.train_loader
        shut_down(accelerator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed_worker(args) -> dict:
    """Train ``--steps`` timed steps after warm-up, then time evaluation and inference."""
    from covid_ddp.data.splits import Split

    images, labels = image_pool(args)
    train_rows = np.arange(args.batch_size * (args.steps + args.warmup_steps)) % len(images)
    eval_rows = np.arange(args.eval_images) % len(images)
    if args.worker == "original":
        trainer = OriginalRecipe(images, labels, args, torch.device(args.device))
        trainer.train(train_rows, max_steps=args.warmup_steps)  # first allocations, cuDNN's choices
        seen, seconds = trainer.train(train_rows, max_steps=args.steps)
        _, eval_rate = trainer.accuracy(eval_rows)
        return {"train": seen / seconds, "eval": eval_rate, "inference": None, "eval_batch": args.batch_size,
                "data_wait_share": trainer.data_wait / seconds}
    trainer = CovidDdpTrainer(images, labels, Split(train_rows, np.empty(0, dtype=np.int64), eval_rows), args)
    trainer.train(max_steps=args.warmup_steps)  # allocations, cuDNN autotuning, compilation
    seen, seconds = trainer.train(max_steps=args.steps)
    trainer.evaluate()  # warm-up of the evaluation shapes
    _, eval_rate = trainer.evaluate()
    # Inference is single-device (covid-ddp-predict): timed in one-process variants only.
    inference = trainer.inference(eval_rows) if trainer.accelerator.num_processes == 1 else None
    eval_batch = trainer.config.eval_batch_size  # evaluation's and inference's batch (1,000 a GPU)
    trainer.close()
    return {"train": seen / seconds, "eval": eval_rate, "inference": inference, "eval_batch": eval_batch}


def time_to_accuracy_worker(args) -> dict:
    """Epochs on the default synthetic set (10,000 images, split as launch/train.py does) until the
    validation accuracy first reaches TARGET_ACCURACY; training seconds only."""
    from covid_ddp.data.format import to_binary
    from covid_ddp.data.splits import split_indices

    images, labels = synthetic(10000, seed=1)
    split = split_indices(to_binary(labels), 0.3, 0.1)
    if args.worker == "tta-original":
        trainer = OriginalRecipe(images, labels, args, torch.device(args.device))
        train, accuracy = (lambda: trainer.train(split.train)), (lambda: trainer.accuracy(split.val)[0])
    else:
        from covid_ddp.data.splits import Split

        trainer = CovidDdpTrainer(images, labels, Split(split.train, np.empty(0, dtype=np.int64), split.val), args)
        train, accuracy = trainer.train, (lambda: trainer.evaluate()[0])
    elapsed, curve = 0.0, []
    while len(curve) < args.max_epochs and (not curve or curve[-1] < TARGET_ACCURACY):
        elapsed += train()[1]
        curve.append(round(accuracy(), 4))
    if isinstance(trainer, CovidDdpTrainer):
        trainer.close()
    reached = curve[-1] >= TARGET_ACCURACY
    return {"seconds": elapsed if reached else None, "epochs": len(curve), "curve": curve}


def sync_cost_worker(args) -> dict:
    """Microseconds a training step spends agreeing with the other ranks, without the model:
    (old) an all-gather of a stop flag and a host sync every step, as covid_ddp did before;
    (now) engine.StepTally's device-side tally every step and one all-gather every 20 steps."""
    from covid_ddp.training.config import TrainConfig
    from covid_ddp.training.engine import StepTally
    from covid_ddp.training.session import build_accelerator, shut_down

    accelerator = build_accelerator(TrainConfig(cpu=args.device == "cpu", mixed_precision="no"))
    device, steps, log_every = accelerator.device, 2000, TrainConfig().log_every
    loss = torch.tensor(0.5, device=device)

    def per_step_agreement():
        for _ in range(steps):
            int(accelerator.gather(torch.tensor([0], device=device)).max().item())

    def every_k_agreement():
        tally = StepTally(accelerator, [0.0, 0.0])
        for step in range(1, steps + 1):
            tally.add(loss, 8, step)
            if step % log_every == 0:
                tally.agree(0)

    figures = {}
    for name, loop in (("old", per_step_agreement), ("now", every_k_agreement)):
        loop()  # warm-up
        _sync(device)
        started = time.perf_counter()
        loop()
        _sync(device)
        figures[name] = 1e6 * (time.perf_counter() - started) / steps
    shut_down(accelerator)
    return figures


def measure_sync_cost(args) -> None:
    """Two processes (two GPUs with --device cuda: one process per GPU, as training runs)."""
    from covid_ddp.training.config import TrainConfig

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit("--sync-cost on GPUs needs 2 of them (one process alone agrees with nobody)")
    try:
        result = run_worker(Variant("sync cost", "sync-cost", processes=2), args, ["--worker", "sync-cost"])
    except VariantFailed as failure:
        raise SystemExit(str(failure)) from None
    print(f"per-step cost of agreeing across 2 {args.device} processes (2000 steps, no model): all-gather + host "
          f"sync every step (before) {result['old']:.1f} us/step; device tally + one all-gather every "
          f"{TrainConfig().log_every} steps (now) {result['now']:.1f} us/step")


def synthetic(count: int, seed: int = 0, image_size: int = 64):
    from covid_ddp.data.synthetic import make_synthetic

    return make_synthetic(count, seed=seed, image_size=image_size)


def image_pool(args) -> tuple[np.ndarray, np.ndarray]:
    """The images every speed variant trains and scores: ``--data-dir``'s set (made once by the
    caller, e.g. the GPU check), else synthetic images made in this process. At most 20,000
    distinct synthetic images at 64 px, fewer at larger sizes (20,000 take about 10 s to make on
    one core); longer runs cycle through them, which costs a timing nothing."""
    if args.data_dir:
        from covid_ddp.data.folders import load_data_dir

        data = load_data_dir(Path(args.data_dir), args.image_size)
        return np.asarray(data.images), data.labels
    needed = max(args.batch_size * (args.steps + args.warmup_steps), args.eval_images)
    return synthetic(min(needed, SYNTHETIC_POOL_PIXELS // args.image_size**2), image_size=args.image_size)


# --- the parent: variants in subprocesses, figures, table -------------------------------------


class VariantFailed(Exception):
    """One variant's process failed; the message holds the end of what it printed."""


def run_worker(variant: Variant, args, mode_flags: list[str] | None = None) -> dict:
    """Run one variant in a fresh process (torchrun for several); returns its JSON result, or raises
    VariantFailed."""
    script = [os.path.abspath(__file__), *(mode_flags or variant.worker_flags()), "--device", args.device,
              "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
              "--eval-images", str(args.eval_images), "--max-epochs", str(args.max_epochs),
              "--model", args.model, "--image-size", str(args.image_size),
              *(["--data-dir", args.data_dir] if args.data_dir else [])]
    env = dict(os.environ)
    if variant.processes > 1:  # the cores shared out, as a CPU user of torchrun would
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // variant.processes))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(variant.processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *script]
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise VariantFailed(f"{variant.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(results[0].removeprefix("RESULT "))


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def forward_flops_per_image(args) -> float:
    """Convolution and matmul FLOPs of one forward pass (what MFU conventionally counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    from covid_ddp.models.net import build_network

    model = build_network(model_spec(args)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, args.image_size, args.image_size))
    return float(counter.get_total_flops())


def peak_precision(device: str, precision: str) -> str:
    """The matmul precision a variant's convolutions really run in: 'bf16', or for fp32 on a GPU
    'tf32' where cuDNN may use TensorFloat-32 (torch's default for convolutions), else 'fp32'."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if device == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def matmul_peak(device: str, precision: str) -> float:
    """Measured FLOP/s of a square matmul in ``precision`` (bf16, tf32 or fp32): the denominator of
    MFU, in the precision the variant's convolutions compute in.

    The size doubles from 256 until one product takes a tenth of a second, or reaches 8192 on a GPU
    (2048 on a CPU): a precision the device only emulates (bf16 on a CPU without AVX512-BF16 or AMX,
    about 1 GFLOP/s) is measured in a second, not in minutes at the largest size."""
    largest = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        size = 256
        while True:
            seconds = matmul_seconds(size, dtype, device)
            if size >= largest or seconds >= 0.1:
                break
            size *= 2
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return 2 * size**3 / seconds


def matmul_seconds(size: int, dtype: torch.dtype, device: str) -> float:
    """Seconds of one ``size`` x ``size`` product: the mean of 20 on a GPU, 3 on a CPU, after a
    warm-up one."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(torch.device(device))
    repeats = 20 if device == "cuda" else 3
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(torch.device(device))
    return (time.perf_counter() - started) / repeats


def variants_for(args) -> list[Variant]:
    """The variants, in the order they run. On a GPU the targets' variant (bf16 at batch 1024, the
    set on the device) comes first and the reference second: a run stopped early keeps those."""
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    recipe = [Variant(f"covid_ddp {precision}", "covid_ddp", precision, args.batch_size) for precision in precisions]
    reference = Variant("original", "original")
    if args.device == "cuda":
        chosen = [Variant("covid_ddp bf16 b1024", "covid_ddp", "bf16", 1024), reference]
        if args.compile:
            chosen.append(Variant("covid_ddp bf16 b1024 compiled", "covid_ddp", "bf16", 1024, compile=True))
        return chosen + recipe[::-1]  # bf16 before fp32
    chosen = [reference, *recipe]
    if args.compile:
        chosen.append(Variant(f"covid_ddp bf16 b{args.batch_size} compiled", "covid_ddp", "bf16", args.batch_size,
                              compile=True))
    if args.scaling:
        precision = precisions[-1]
        chosen.append(Variant(f"covid_ddp {precision} 2 procs", "covid_ddp", precision, args.batch_size, processes=2))
    return chosen


def medians_of(results: list[dict]) -> dict:
    return {key: (statistics.median(r[key] for r in results) if results[0][key] is not None else None)
            for key in results[0]}


def measured_rows(variants, runs: dict, errors: dict) -> list[dict]:
    """One row per variant run so far: its medians, or the error that stopped it."""
    rows = []
    for variant in variants:
        row = {"variant": variant.name, "batch": variant.batch_size, "precision": variant.precision,
               "repeats": len(runs[variant.name])}
        if variant.name in errors:
            rows.append({**row, "error": errors[variant.name]})
        elif runs[variant.name]:
            rows.append({**row, **medians_of(runs[variant.name])})
    return rows


def add_ratios(args, rows: list[dict]) -> dict:
    """MFU and the ratios to (a), added to the rows in place; returns the header figures."""
    flops = forward_flops_per_image(args)
    peaks = {name: matmul_peak(args.device, name)
             for name in {peak_precision(args.device, row["precision"]) for row in rows if "train" in row}}
    reference = next((row for row in rows if row["variant"] == "original" and "train" in row), None)
    for row in rows:
        if "train" not in row:
            continue
        peak = peak_precision(args.device, row["precision"])
        row.update(mfu_percent=100 * 3 * flops * row["train"] / peaks[peak], mfu_peak=peak,
                   matmul_peak_tflops=peaks[peak] / 1e12,
                   train_vs_original=None if reference is None else row["train"] / reference["train"],
                   eval_vs_original=None if reference is None else row["eval"] / reference["eval"])
    return {"forward_mflop_per_image": flops / 1e6, "matmul_peaks_tflops": {k: v / 1e12 for k, v in peaks.items()}}


def print_speed_table(args, rows: list[dict], figures: dict) -> None:
    reference = "the original script" if args.model == "net" else "a plain PyTorch loop"
    peaks = ", ".join(f"{p} matmul peak {peak:.2f} TFLOP/s"
                      for p, peak in sorted(figures["matmul_peaks_tflops"].items()))
    print(f"model: {model_spec(args).describe()}; (a) = {reference}")
    print(f"device: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"{args.steps} timed steps x {args.repeats} repeats (median); forward "
          f"{figures['forward_mflop_per_image']:.0f} MFLOP/image; {peaks}")
    header = ["variant", "batch", "ms/step", "train img/s", "eval img/s", "infer img/s", "MFU %", "10-ep 7k s",
              "train x", "eval x"]
    print("".join(f"{h:>14}" if i else f"{h:<30}" for i, h in enumerate(header)))
    for row in rows:
        if "train" not in row:
            print(f"{row['variant']:<30}{row['batch']:>14}  FAILED: {row['error'].splitlines()[0]}")
            continue
        cells = [row["variant"], row["batch"], f"{1000 * row['batch'] / row['train']:.2f}", f"{row['train']:.0f}",
                 f"{row['eval']:.0f}", "-" if row["inference"] is None else f"{row['inference']:.0f}",
                 f"{row['mfu_percent']:.1f}", f"{10 * MCFAM_TRAIN_IMAGES_PER_EPOCH / row['train']:.1f}",
                 _ratio(row["train_vs_original"]), _ratio(row["eval_vs_original"])]
        print("".join(f"{str(c):>14}" if i else f"{c:<30}" for i, c in enumerate(cells)))
    reference = next((row for row in rows if row["variant"] == "original" and "data_wait_share" in row), None)
    if reference is not None:
        print(f"(a) waited for its one DataLoader worker {100 * reference['data_wait_share']:.0f}% of its timed steps: "
              f"where that is high, the ratios to (a) measure this host's CPU as much as the {args.device}")


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_table(args, rows: list[dict], complete: bool, figures: dict | None = None) -> None:
    """``--json``, rewritten whole after every variant (a run stopped part-way keeps what it measured)."""
    if not args.json:
        return
    from covid_ddp.files import atomic_path

    table = {"complete": complete, "device": args.device, "torch": torch.__version__, "steps": args.steps,
             "warmup_steps": args.warmup_steps, "eval_images": args.eval_images, "model": args.model,
             "image_size": args.image_size, "repeats": args.repeats, **(figures or {}), "variants": rows}
    with atomic_path(Path(args.json)) as tmp:
        tmp.write_text(json.dumps(table, indent=1) + "\n")


def measure_speed(args) -> None:
    variants = variants_for(args)
    runs, errors = {v.name: [] for v in variants}, {}
    for repeat in range(args.repeats):  # variants take turns, so a noisy minute hits all of them
        for variant in variants:
            if variant.name in errors:
                continue
            try:
                result = run_worker(variant, args)
            except VariantFailed as failure:  # a row, not the end: the other variants still run
                errors[variant.name] = str(failure)
                print(f"throughput: {variant.name}: FAILED ({str(failure).splitlines()[0]})", flush=True)
            else:
                runs[variant.name].append(result)
                print(f"throughput: {variant.name} (repeat {repeat + 1}): train {result['train']:.0f}, eval "
                      f"{result['eval']:.0f}" + ("" if result["inference"] is None else
                                                 f", inference {result['inference']:.0f}") + " images/s", flush=True)
            write_table(args, measured_rows(variants, runs, errors), complete=False)
    rows = measured_rows(variants, runs, errors)
    figures = add_ratios(args, rows)
    print_speed_table(args, rows, figures)
    write_table(args, rows, complete=True, figures=figures)
    if errors:
        raise SystemExit(f"{len(errors)} of {len(variants)} variant(s) failed: {', '.join(errors)}")


def measure_time_to_accuracy(args) -> None:
    precision = "bf16" if args.precision in ("bf16", "both") else "fp32"
    print(f"time to {TARGET_ACCURACY:.0%} validation accuracy, default synthetic set (6,300 training images, "
          f"700 validation), training seconds only:")
    for name, mode in (("original", "tta-original"), (f"covid_ddp {precision}", "tta-covid_ddp")):
        variant = Variant(name, mode, precision, args.batch_size)
        try:
            result = run_worker(variant, args, ["--worker", mode, "--precision", precision,
                                                "--batch-size", str(args.batch_size)])
        except VariantFailed as failure:
            raise SystemExit(str(failure)) from None
        reached = "not reached" if result["seconds"] is None else f"{result['seconds']:.1f} s"
        print(f"  {name:<22} {reached} after {result['epochs']} epoch(s); validation accuracy per epoch "
              f"{result['curve']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every variant runs")
    parser.add_argument("--batch-size", type=int, default=100, help="training batch size (original: 100)")
    parser.add_argument("--precision", default="both", choices=["fp32", "bf16", "both"], help="covid_ddp's precision")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile'd covid_ddp variant")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 CPU, 300 GPU)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3 CPU, 30 GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is printed")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="images scored in the evaluation timing (default: 3,000 CPU, 100,000 GPU)")
    parser.add_argument("--scaling", action="store_true", help="add covid_ddp with 2 CPU processes (torchrun)")
    parser.add_argument("--sync-cost", action="store_true",
                        help="only time what a step spends agreeing across 2 processes, before and now")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help=f"time (a) and (b) to {TARGET_ACCURACY:.0%}% validation accuracy")  # %%: argparse
    parser.add_argument("--max-epochs", type=int, default=10, help="epochs --time-to-accuracy tries at most")
    parser.add_argument("--json", help="also write the speed table to this JSON file (rewritten after every "
                        "variant, 'complete': false until the table is whole)")
    parser.add_argument("--data-dir", help="an MCFAM-format folder whose images every variant uses (default: "
                        "synthetic images made in each variant's process)")
    parser.add_argument("--model", default="net", help="covid-ddp-train's --model (a backbone needs torchvision)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the synthetic images (default 64)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one variant, print RESULT json
    return parser


def main() -> None:
    args = build_parser().parse_args()
    gpu = args.device == "cuda"
    heavy = not gpu and (args.model != "net" or args.image_size > 64)  # a backbone on a CPU: ~20-70 img/s
    args.steps = args.steps or (300 if gpu else 5 if heavy else 20)
    args.warmup_steps = args.warmup_steps or (30 if gpu else 2 if heavy else 3)
    args.eval_images = args.eval_images or (100000 if gpu else 400 if heavy else 3000)
    if heavy and "--repeats" not in sys.argv:
        args.repeats = 2
    if args.worker:
        workers = {"sync-cost": sync_cost_worker}
        worker = workers.get(args.worker, time_to_accuracy_worker if args.worker.startswith("tta-") else speed_worker)
        result = worker(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return
    if args.sync_cost:
        measure_sync_cost(args)
        return
    if args.scaling and gpu:
        raise SystemExit("--scaling compares CPU processes; on GPUs use accelerate launch with --num_processes")
    measure_speed(args)
    if args.time_to_accuracy:
        measure_time_to_accuracy(args)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak resident memory of the largest variant process: {children:.0f} MiB")


if __name__ == "__main__":
    main()
