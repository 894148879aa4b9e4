"""Everything covid_ddp does on a GPU, as a user starts it, in one run that writes one JSON.

    python benchmarks/gpu_check.py                       # on a machine with one GPU: < 8 minutes
    python benchmarks/gpu_check.py --dry-run             # the same steps on the CPU, small (CI)

Steps, each a real command in its own process (rc, seconds, what it printed and wrote):

- ``train-fp32``, ``train-bf16``, ``train-fp16`` (GradScaler): 1-GPU runs, the set on the device;
- ``train-compile``: ``--compile``; ``train-dataloader``: ``--data-on-device no``;
- ``stop-inside-an-epoch`` then ``resume``: fp16, SIGTERM after step 5 of epoch 2, ``--resume
  auto``, and the largest weight difference to ``train-fp16`` (the same run, never stopped);
- ``predict``, ``evaluate``, ``export`` on the GPU; ``cpu-inference``: the bf16 run's weights
  loaded on the CPU, against the GPU's probabilities;
- ``throughput``: ``benchmarks/throughput.py`` (the original recipe and covid_ddp, training,
  evaluation and inference images/s, in the same run);
- ``train-resnet18-224-bf16``: ``--model resnet18`` on 224 px images in bf16 (64 px with
  ``--dry-run``), its images/s by epoch; skipped where torchvision does not import (the
  ``backbones`` extra);
- ``two-processes-one-gpu``: ``torchrun --nproc_per_node 2`` on one GPU. NCCL cannot put two
  ranks on one GPU, so covid_ddp refuses it in one line (expected); with ``--dry-run``, two CPU
  processes (gloo) train.

The JSON (``--output``, default ``runs/gpu_check/gpu_check.json``) holds the machine, each step
and ``ok``: every step did what it should. The exit status is 1 otherwise. A dry run compiles
with dynamo's ``eager`` backend (inductor's CPU compilation alone would take minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN, PREDICT, EVALUATE, EXPORT = (ROOT / "launch" / f"{name}.py" for name in ("train", "predict", "evaluate",
                                                                                  "export"))
FAULTS = ROOT / "tests" / "helpers" / "faulty_train.py"  # sigterm:N, a stop at a known step


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    check = Check(work, args)
    report = {"dry_run": args.dry_run, "machine": machine(), "steps": check.steps}
    try:
        check.run_all()
    finally:
        report["ok"] = all(step.get("ok") for step in check.steps.values())
        report["seconds"] = round(time.monotonic() - started, 1)
        output = Path(args.output or work / "gpu_check.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print_summary(report, output)
    return 0 if report["ok"] else 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, on a small set")
    parser.add_argument("--work-dir", default="runs/gpu_check", help="data, runs and outputs go here")
    parser.add_argument("--output", help="the JSON (default: WORK_DIR/gpu_check.json)")
    parser.add_argument("--images", type=int, help="synthetic images (default: 10,000; 400 with --dry-run)")
    parser.add_argument("--skip-throughput", action="store_true", help="leave out benchmarks/throughput.py")
    parser.add_argument("--step-timeout", type=float, default=300, help="seconds any one step may take")
    return parser.parse_args()


def machine() -> dict:
    import torch
    import accelerate

    found = {"python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__,
             "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found.update(gpu=properties.name, gpus=torch.cuda.device_count(),
                     capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                     gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                     nccl=".".join(map(str, torch.cuda.nccl.version())), cudnn=torch.backends.cudnn.version())
    return found


class Check:
    """The steps, in order; each records into ``steps`` even when an earlier one failed."""

    def __init__(self, work: Path, args):
        self.work, self.args, self.steps = work, args, {}
        self.dry = args.dry_run
        self.images = args.images or (400 if self.dry else 10000)
        # 70/30 then 10% validation: 252 training images of 400 at batch 20, 6,300 of 10,000 at
        # batch 100: 12 or 63 steps an epoch; agreed every 5 steps, so step 5 of epoch 2 is a stop.
        self.batch = 20 if self.dry else 100
        self.epochs = 2 if self.dry else 3
        self.device = "cpu" if self.dry else "cuda"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        if self.dry:
            self.env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")

    def run_all(self) -> None:
        self.data = self.make_data()
        for name, extra in (("train-fp32", ["--mixed-precision", "no"]), ("train-bf16", ["--mixed-precision", "bf16"]),
                            ("train-fp16", ["--mixed-precision", "fp16"]), ("train-compile", ["--compile"]),
                            ("train-dataloader", ["--data-on-device", "no"])):
            self.train(name, extra)
        self.stop_and_resume()
        self.inference()
        if not self.args.skip_throughput:
            self.throughput()
        self.two_processes()
        self.backbone()

    # --- the steps ----------------------------------------------------------------------------

    def make_data(self, images: int | None = None, image_size: int = 64) -> Path:
        from covid_ddp.store import images_name
        from covid_ddp.synthetic import make_synthetic

        # Each set its own folder: the backbone step's set must not replace the one the others used.
        folder = self.work / ("data" if images is None and image_size == 64 else f"data-{images}x{image_size}")
        folder.mkdir(exist_ok=True)
        images, labels = make_synthetic(images or self.images, seed=3, image_size=image_size)
        np.savez(folder / images_name(image_size), train_images=images)
        np.savez(folder / "train_labels.npz", train_labels=labels)
        return folder

    def flags(self, run: str, *extra, data: Path | None = None) -> list[str]:
        return ["--data-dir", str(data or self.data), "--output-dir", str(self.work / run), "--overwrite",
                "--epochs", str(self.epochs), "--batch-size", str(self.batch), "--log-images-every", "0",
                "--bootstrap", "200", *(["--cpu"] if self.dry else []), *extra]

    def train(self, name: str, extra: list[str], script=TRAIN, script_args=(), data: Path | None = None) -> dict:
        env = dict(self.env)
        if "--compile" in extra and self.dry:
            env["ACCELERATE_DYNAMO_BACKEND"] = "EAGER"
        step = self.command(name, [sys.executable, str(script), *script_args, *self.flags(name, *extra, data=data)],
                            env=env)
        run_dir = self.work / name
        if step["rc"] == 0:
            config = json.loads((run_dir / "config.json").read_text())
            metrics = json.loads((run_dir / "metrics.json").read_text())
            speeds = [epoch["images_per_s"] for epoch in metrics["history"]]
            step.update(distributed=config["distributed"], test_accuracy=metrics["test"]["accuracy"],
                        test_roc_auc=metrics["test"]["roc_auc"], train_images_per_s_by_epoch=speeds,
                        notes=[line for line in step.pop("stderr_lines") if "note:" in line])
        return step

    def stop_and_resume(self) -> None:
        steps_per_epoch = int(self.images * 0.7 * 0.9) // self.batch
        name, stop_at = "stop-inside-an-epoch", steps_per_epoch + 5
        extra = ["--mixed-precision", "fp16", "--log-every", "5"]  # fp16: its GradScaler's state resumes too
        stopped = self.command(name, [sys.executable, str(FAULTS), f"sigterm:{stop_at}",
                                      *self.flags("resumed", *extra)], expect_rc=None)
        checkpoints = sorted(p.name for p in (self.work / "resumed" / "checkpoints").glob("epoch_*"))
        stopped.update(checkpoints=checkpoints, ok=stopped["rc"] != 0 and "epoch_002_step_00005" in checkpoints)
        resumed = self.command("resume", [sys.executable, str(TRAIN), *self.flags("resumed", *extra),
                                          "--resume", "auto"])
        resumed.pop("stderr_lines", None)
        if resumed["rc"] == 0 and self.steps["train-fp16"]["rc"] == 0:
            resumed["max_weight_difference_to_train_fp16"] = max_difference(self.work / "resumed",
                                                                           self.work / "train-fp16")

    def inference(self) -> None:
        weights = self.work / "train-bf16" / "COVID_binary_classifier.pth"
        images = self.data / "train_images64.npz"
        csv = self.work / "predictions.csv"
        predict = self.command("predict", [sys.executable, str(PREDICT), "--weights", str(weights), "--device",
                                           self.device, "--output", str(csv), str(images)])
        if predict["rc"] == 0:
            predict["images_per_s_with_start_up"] = round(self.images / predict["seconds"])
        self.command("evaluate", [sys.executable, str(EVALUATE), "--weights", str(weights), "--device", self.device,
                                  "--output-dir", str(self.work / "evaluation"), "--bootstrap", "200"])
        if importlib.util.find_spec("onnxruntime") is None:  # the export extra
            self.steps["export"] = {"ok": True, "skipped": "the export extra (onnx, onnxruntime) is not installed"}
        else:
            self.command("export", [sys.executable, str(EXPORT), "--weights", str(weights), "--onnx",
                                    str(self.work / "covid.onnx")])
        self.steps["cpu-inference"] = cpu_inference(weights, images, csv) if predict["rc"] == 0 else {"ok": False}

    def throughput(self) -> None:
        table = self.work / "throughput.json"
        sizes = ["--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--eval-images", "200",
                 "--precision", "fp32"] if self.dry else ["--device", "cuda", "--compile"]
        step = self.command("throughput", [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *sizes,
                                           "--repeats", "1", "--json", str(table)])
        step.pop("stderr_lines", None)
        if step["rc"] == 0:
            step["table"] = json.loads(table.read_text())

    def two_processes(self) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(free_port()), str(TRAIN),
                   *self.flags("two-processes", "--epochs", "1")]
        if self.dry:  # two CPU processes (gloo) on the CPU: they train
            self.command("two-processes-one-gpu", command)
            return
        step = self.command("two-processes-one-gpu", command, expect_rc=None)
        import torch

        gpus = torch.cuda.device_count()
        refusal = "2 processes were started on this machine but it has"
        step["ok"] = (step["rc"] != 0 and any(refusal in line for line in step["stderr_lines"])) if gpus == 1 \
            else step["rc"] == 0

    def backbone(self) -> None:
        """A standard backbone at the size it is made for: resnet18, 224 px (64 in a dry run), bf16."""
        name = "train-resnet18-224-bf16"
        try:
            import torchvision  # noqa: F401  (a CUDA build beside a CPU torch fails here, not at find_spec)
        except Exception as error:  # noqa: BLE001  (any import failure: the step cannot run here)
            self.steps[name] = {"ok": True, "skipped": f"torchvision does not import ({str(error)[:120]}): "
                                                       f"pip install 'covid_ddp[backbones]'"}
            return
        data = self.make_data(200 if self.dry else 3000, 64 if self.dry else 224)
        self.train(name, ["--model", "resnet18", "--mixed-precision", "bf16", "--epochs", "1" if self.dry else "2"],
                   data=data)

    # --- running one ----------------------------------------------------------------------------

    def command(self, name: str, command: list[str], env=None, expect_rc: int | None = 0) -> dict:
        print(f"gpu_check: {name} ...", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env or self.env, cwd=ROOT,
                                  timeout=self.args.step_timeout)
            rc, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as timeout:
            rc, stdout, stderr = "timeout", _text(timeout.stdout), _text(timeout.stderr)
        step = {"command": " ".join(map(str, command[1:])), "rc": rc,
                "seconds": round(time.monotonic() - started, 1),
                "ok": rc == expect_rc if expect_rc is not None else None,
                "stderr_lines": [line for line in stderr.splitlines() if "covid-ddp" in line][-5:]}
        if step["ok"] is False:
            step.update(stdout_tail=stdout[-2000:], stderr_tail=stderr[-4000:])
        self.steps[name] = step
        return step


def cpu_inference(weights: Path, images: Path, csv: Path) -> dict:
    """The GPU run's weights on the CPU (plain load_model), against the probabilities predict wrote."""
    import csv as csv_module

    from covid_ddp import load_model, predict

    with open(csv) as handle:
        on_device = np.array([float(row["p_covid"]) for row in csv_module.DictReader(handle)])
    with np.load(images, allow_pickle=False) as archive:
        pixels = archive["train_images"]
    on_cpu = predict(load_model(weights, device="cpu"), pixels)
    worst = float(np.abs(on_cpu - on_device).max())
    return {"ok": worst < 1e-3, "max_p_covid_difference_cpu_vs_device": worst}


def max_difference(run_a: Path, run_b: Path) -> float:
    import torch

    a, b = (torch.load(run / "COVID_binary_classifier.pth", weights_only=True) for run in (run_a, run_b))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def print_summary(report: dict, output: Path) -> None:
    print(f"\n{'step':<24}{'ok':>6}{'rc':>9}{'seconds':>10}  detail")
    for name, step in report["steps"].items():
        detail = {key: step[key] for key in ("distributed", "test_accuracy", "max_weight_difference_to_train_fp16",
                                             "images_per_s_with_start_up", "max_p_covid_difference_cpu_vs_device",
                                             "skipped", "notes") if key in step}
        if "distributed" in detail:
            detail["distributed"] = {k: detail["distributed"][k] for k in ("device", "mixed_precision", "train_loader")}
        print(f"{name:<24}{str(step.get('ok')):>6}{str(step.get('rc', '')):>9}{str(step.get('seconds', '')):>10}  "
              f"{json.dumps(detail) if detail else ''}")
    print(f"\n{'all steps as expected' if report['ok'] else 'SOME STEPS FAILED'} in {report['seconds']} s; "
          f"wrote {output}")


if __name__ == "__main__":
    sys.exit(main())
