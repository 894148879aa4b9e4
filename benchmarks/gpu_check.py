"""Everything covid_ddp does on a GPU, as a user starts it, in one run that keeps what it measured.

    python benchmarks/gpu_check.py --output "$OUT/gpu_check.json"   # one GPU: about 7.5 minutes by estimate
    python benchmarks/gpu_check.py --dry-run --work-dir /tmp/gc      # the same steps on the CPU, small (CI)
    python benchmarks/gpu_check.py --steps train-compile,export      # a second try at the steps left

A GPU is lent for minutes, a command for at most 10 of them, and whatever was not written to a
kept folder when the command is stopped is lost. So: the JSON (``--output``) is rewritten
atomically after every step and every throughput variant; ``--deadline`` (540 s) caps each
step's timeout by the time left and does not start a step that could not finish; SIGTERM or
Ctrl-C ends the step in progress and records the rest as not run; each step prints its key
numbers as it ends. The most valuable steps run first:

1. ``machine``: GPU, driver, clocks, CUDA/cuDNN/NCCL, package versions, TF32 flags, other
   processes on the GPU, NCCL_/TORCH_ variables, the commit or a hash of the code;
2. ``data``: 10,000 synthetic 64 px images (MCFAM's shape), made once for every step;
3. ``train-bf16``: the recipe on the GPU (bf16, batch 100, the set on the device), 3 epochs;
4. ``throughput``: ``benchmarks/throughput.py --device cuda --compile`` on that set: bf16 at
   batch 1024, the original recipe, compiled at 1024, bf16 and fp32 at 100; inference at 1,000;
5. ``mcfam-10-epochs``: a real 10-epoch run with default flags, timed from process start to the
   weights written, with its seconds per epoch;
6. ``train-fp16`` (GradScaler), ``train-fp32-augment`` (``--augment``'s CUDA generators),
   ``train-dataloader`` (``--data-on-device no``);
7. ``stop-inside-an-epoch`` then ``resume`` (fp16: SIGTERM after step 5 of epoch 2, ``--resume
   auto``; the weight difference to ``train-fp16`` recorded, not asserted: GPU kernels are not
   bit-deterministic);
8. ``train-compile`` (inductor);
9. ``predict`` (10,000 images), ``gradcam`` (8 overlays), ``evaluate``, all on the GPU;
   ``scores-agree``: P(COVID) on the GPU against the CPU, strict fp32 (TF32 off, held to 1e-4) and
   with torch's defaults (TF32 convolutions: recorded);
10. ``two-processes-one-gpu``: torchrun with 2 processes on one GPU, refused in one line;
11. ``export``: the GPU run's weights to ONNX, ONNX Runtime against torch; ``train-resnet18-224-bf16``.

Every training step asserts what its ``config.json`` says was used: device, data device,
precision, compile backend, loader path. Without a GPU the check refuses to start (one line),
except with ``--dry-run``: the same steps on the CPU on 400 images, compiled with dynamo's
``eager`` backend. The exit status is 0 when every step did what it should, 1 otherwise, 2 when
it could not start. Results go in docs/gpu-check.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from check_runner import Report, StepRunner, last_result, log_tail

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TRAIN, PREDICT, EVALUATE, EXPORT = (ROOT / "launch" / f"{name}.py" for name in ("train", "predict", "evaluate",
                                                                                  "export"))
PROBES = BENCHMARKS / "gpu_probes.py"
FAULTS = ROOT / "tests" / "helpers" / "faulty_train.py"  # sigterm:N, a stop at a known step
DEFAULT_DEADLINE_S = 540  # under the 600 s a lent GPU's command may run, with room to start and copy back
USED = ("device", "data_device", "mixed_precision", "dynamo_backend", "train_loader")
# The targets covid_ddp was set on an H100 (issue 1), compared with what this run measured.
TARGETS = {"train_images_per_s_bf16_b1024": 100_000, "train_vs_original": 20,
           "mcfam_10_epochs_to_weights_s": 3, "inference_images_per_s": 500_000}


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], dict]
    gpu_s: float  # estimated seconds on one H100/H200 (process start-up dominates: about 8 s each)
    dry_s: float  # measured seconds of the --dry-run on a 2-core CPU
    cap_s: float  # the most it may take, whatever the deadline leaves


class Check:
    """The steps, in the order of what their minutes are worth; each fills one row of the report."""

    def __init__(self, args, runner: StepRunner, work: Path, logs: Path):
        self.args, self.runner, self.work, self.logs = args, runner, work, logs
        self.dry = args.dry_run
        self.images = args.images or (400 if self.dry else 10000)
        # 70/30 then 10% validation: 252 training images of 400 at batch 20, 6,300 of 10,000 at
        # batch 100: 12 or 63 steps an epoch; agreed every 5 steps, so step 5 of epoch 2 is a stop.
        self.batch = 20 if self.dry else 100
        self.epochs = 2 if self.dry else 3
        self.device = "cpu" if self.dry else "cuda"
        self.data = work / "data"
        self.weights = work / "train-bf16" / "COVID_binary_classifier.pth"
        self.stop_flags = ["--mixed-precision", "fp16", "--log-every", "5"]  # fp16: its GradScaler resumes too
        self.report: Report | None = None
        self.step_cap_s = 0.0  # the cap of the step under way (set by run_all from the plan)

    def plan(self) -> list[Step]:
        training = dict(gpu_s=15, dry_s=8, cap_s=180)
        return [
            Step("machine", self.machine, 8, 5, 60),
            Step("data", self.make_data, 10, 3, 120),
            Step("train-bf16", lambda: self.train("train-bf16", ["--mixed-precision", "bf16"], "bf16"), **training),
            Step("throughput", self.throughput, 110, 45, 300),
            Step("mcfam-10-epochs", self.mcfam_run, 25, 15, 180),
            Step("train-fp16", lambda: self.train("train-fp16", ["--mixed-precision", "fp16"], "fp16"), **training),
            Step("train-fp32-augment", lambda: self.train("train-fp32-augment", ["--mixed-precision", "no",
                                                                                  "--augment"], "no"), **training),
            Step("train-dataloader", lambda: self.train("train-dataloader", ["--mixed-precision", "bf16",
                                                                              "--data-on-device", "no"], "bf16",
                                                        loader="DataLoader"), **training),
            Step("stop-inside-an-epoch", self.stop_inside_an_epoch, **training),
            Step("resume", self.resume, **training),
            Step("train-compile", lambda: self.train("train-compile", ["--mixed-precision", "bf16", "--compile"],
                                                     "bf16", compiled=True), 60, 10, 300),
            Step("predict", self.predict, 10, 4, 120),
            Step("gradcam", self.gradcam, 10, 5, 120),
            Step("evaluate", self.evaluate, 12, 5, 120),
            Step("scores-agree", self.scores_agree, 10, 5, 120),
            Step("two-processes-one-gpu", self.two_processes, 15, 12, 120),
            Step("export", self.export, 20, 10, 180),
            Step("train-resnet18-224-bf16", self.backbone, 50, 15, 300),
        ]

    # --- the steps ------------------------------------------------------------------------------

    def machine(self) -> dict:
        row = self.probe("machine", ["machine"])
        if row["ok"]:
            self.report.header["machine"] = row.pop("result")
            gpus = self.report.header["machine"].get("gpus") or [{"name": "no GPU (dry run)"}]
            row["summary"] = f"{gpus[0]['name']}, torch {self.report.header['machine']['versions']['torch']}"
        return row

    def make_data(self) -> dict:
        row = self.probe("data", ["make-data", "--folder", str(self.data), "--images", str(self.images)])
        return {**row, "summary": f"{self.images} synthetic 64 px images in {row['seconds']} s"} if row["ok"] else row

    def train(self, name: str, extra: list[str], precision: str, loader: str = "device", compiled: bool = False,
              script_args: tuple = (), epochs: int | None = None, data: Path | None = None, run: str | None = None,
              expect_rc: int = 0, flags: list[str] | None = None) -> dict:
        """A covid-ddp-train run; ok when it exits as expected and its config.json used what was asked."""
        run_dir = self.work / (run or name)
        script = [str(FAULTS), *script_args] if script_args else [str(TRAIN)]
        arguments = flags if flags is not None else self.flags(run_dir, epochs, data)
        env = {**self.runner.env, **({"ACCELERATE_DYNAMO_BACKEND": "EAGER"} if compiled and self.dry else {})}
        row = self.command(name, [sys.executable, *script, *arguments, *extra], env=env)
        if expect_rc is None:  # the caller judges the exit
            return row
        if row["rc"] != expect_rc:
            return self.failed(row, f"exit {row['rc']}, expected {expect_rc}")
        used = json.loads((run_dir / "config.json").read_text())["distributed"]
        expected = self.expected(precision, loader, compiled)
        mismatches = [f"{key} {used.get(key)!r}, expected {want!r}" for key, want in expected.items()
                      if str(used.get(key)).split(":")[0] != want]
        history = json.loads((run_dir / "metrics.json").read_text())
        row.update(used={key: used.get(key) for key in USED}, mismatches=mismatches,
                   test_accuracy=history["test"]["accuracy"], test_roc_auc=history["test"]["roc_auc"],
                   images_per_s_by_epoch=[round(e["images_per_s"]) for e in history["history"]],
                   seconds_by_epoch=[e.get("seconds") for e in history["history"]],
                   notes=[line for line in log_tail(row["log"], 20000).splitlines() if "note:" in line][-3:],
                   ok=not mismatches)
        row["summary"] = (f"{used['device']} {used['mixed_precision']} {used['train_loader']} "
                          f"{used['dynamo_backend']}; images/s by epoch {row['images_per_s_by_epoch']}; "
                          f"test AUC {_number(row['test_roc_auc'])}" + (f"; WRONG: {mismatches}" if mismatches else ""))
        return row

    def expected(self, precision: str, loader: str, compiled: bool) -> dict:
        """What config.json must say: on the GPU exactly what was asked; in a dry run, fp16 (GPU-only)
        is replaced by the CPU's auto choice, and --compile uses dynamo's eager backend."""
        if self.dry and precision == "fp16":
            precision = self.auto_precision()
        return {"device": self.device, "data_device": self.device if loader == "device" else "cpu",
                "mixed_precision": precision, "train_loader": loader,
                "dynamo_backend": ("EAGER" if self.dry else "INDUCTOR") if compiled else "NO"}

    def auto_precision(self) -> str:
        """What --mixed-precision auto picks here: bf16 on Ampere or newer, fp16 on older GPUs; on the
        CPU bf16 where it computes it natively, else fp32 ('no')."""
        if self.dry:
            from covid_ddp.training.hardware import cpu_has_native_bf16

            return "bf16" if cpu_has_native_bf16() else "no"
        gpus = self.report.header.get("machine", {}).get("gpus")
        if gpus:  # from the machine step's child: this process stays off the GPU
            major = int(gpus[0]["capability"].split(".")[0])
        else:
            import torch

            major = torch.cuda.get_device_capability(0)[0]
        return "bf16" if major >= 8 else "fp16"

    def flags(self, run_dir: Path, epochs: int | None = None, data: Path | None = None) -> list[str]:
        return ["--data-dir", str(data or self.data), "--output-dir", str(run_dir), "--overwrite",
                "--epochs", str(epochs or self.epochs), "--batch-size", str(self.batch), "--log-images-every", "0",
                "--bootstrap", "200", *(["--cpu"] if self.dry else [])]

    def throughput(self) -> dict:
        table = self.work / "throughput.json"
        table.unlink(missing_ok=True)
        sizes = ["--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--eval-images", "200",
                 "--precision", "bf16"] if self.dry else ["--device", "cuda", "--compile"]
        command = [sys.executable, str(BENCHMARKS / "throughput.py"), *sizes, "--repeats", "1",
                   "--data-dir", str(self.data), "--json", str(table)]
        seen = {"mtime": None, "rows": 0}

        def copy_partial_table():  # after every variant, into the kept JSON
            if not table.is_file() or table.stat().st_mtime_ns == seen["mtime"]:
                return
            seen["mtime"] = table.stat().st_mtime_ns
            partial = json.loads(table.read_text())
            for row in partial["variants"][seen["rows"]:]:
                print(f"gpu_check:   throughput {_variant_line(row)}", flush=True)
            seen["rows"] = len(partial["variants"])
            self.report.update("throughput", table=partial, ok=None, not_run="in progress")

        row = self.command("throughput", command, on_poll=copy_partial_table)
        row["table"] = json.loads(table.read_text()) if table.is_file() else None
        complete = bool(row["table"] and row["table"]["complete"])
        row["ok"] = row["rc"] == 0 and complete
        if not row["ok"]:
            row["tail"] = log_tail(row["log"])
        rows = {r["variant"]: r for r in (row["table"] or {}).get("variants", [])}
        row["summary"] = "; ".join(_variant_line(r) for r in rows.values()) or "no variant finished"
        return row

    def mcfam_run(self) -> dict:
        """A 10-epoch run on the MCFAM-shaped set with covid-ddp-train's defaults, as a user starts it."""
        run_dir = self.work / "mcfam-10-epochs"
        weights = run_dir / "COVID_binary_classifier.pth"
        flags = ["--data-dir", str(self.data), "--output-dir", str(run_dir), "--overwrite", "--epochs", "10",
                 *(["--cpu"] if self.dry else [])]
        row = self.train("mcfam-10-epochs", [], self.auto_precision(), flags=flags)
        if row["rc"] == 0:
            row["seconds_process_start_to_weights"] = round(weights.stat().st_mtime - row["started_at"], 2)
            row["seconds_of_the_10_epochs"] = round(sum(s for s in row["seconds_by_epoch"] if s), 2)
            row["summary"] = (f"weights written {row['seconds_process_start_to_weights']} s after the process "
                              f"started; the 10 epochs {row['seconds_of_the_10_epochs']} s; " + row["summary"])
        return row

    def stop_inside_an_epoch(self) -> dict:
        steps_per_epoch = int(self.images * 0.7 * 0.9) // self.batch
        stop_at = f"sigterm:{steps_per_epoch + 5}"
        row = self.train("stop-inside-an-epoch", self.stop_flags, "fp16", script_args=(stop_at,),
                         run="resumed", expect_rc=None)
        checkpoints = sorted(p.name for p in (self.work / "resumed" / "checkpoints").glob("epoch_*"))
        row.update(checkpoints=checkpoints, ok=row["rc"] not in (0, None) and "epoch_002_step_00005" in checkpoints)
        row["summary"] = f"exit {row['rc']}; checkpoints {checkpoints}"
        return row

    def resume(self) -> dict:
        row = self.train("resume", [*self.stop_flags, "--resume", "auto"], "fp16", run="resumed")
        reference = self.work / "train-fp16" / "COVID_binary_classifier.pth"
        if row["rc"] == 0 and reference.is_file():
            row["max_weight_difference_to_train_fp16"] = max_difference(self.work / "resumed", self.work / "train-fp16")
            difference = row["max_weight_difference_to_train_fp16"]
            row["summary"] = f"largest weight difference to the run never stopped {difference:.3g} (recorded); " \
                             + row["summary"]
        return row

    def predict(self) -> dict:
        csv = self.work / "predictions.csv"
        row = self.command("predict", [sys.executable, str(PREDICT), "--weights", str(self.weights), "--device",
                                       self.device, "--output", str(csv), str(self.data / "train_images64.npz")])
        if row["rc"] != 0:
            return self.failed(row, f"exit {row['rc']}")
        scored = len(csv.read_text().splitlines()) - 1
        row.update(ok=scored == self.images, images_scored=scored,
                   images_per_s_with_start_up=round(scored / row["seconds"]))
        row["summary"] = f"{scored} images, {row['images_per_s_with_start_up']} images/s with start-up"
        return row

    def gradcam(self) -> dict:
        inputs, overlays = self.work / "gradcam_inputs.npz", self.work / "gradcam"
        with np.load(self.data / "train_images64.npz", allow_pickle=False) as archive:
            np.savez(inputs, train_images=archive["train_images"][:8])
        row = self.command("gradcam", [sys.executable, str(PREDICT), "--weights", str(self.weights), "--device",
                                       self.device, "--gradcam", str(overlays), "--output",
                                       str(self.work / "gradcam.csv"), str(inputs)])
        if row["rc"] != 0:
            return self.failed(row, f"exit {row['rc']}")
        written = sorted(p.name for p in overlays.glob("*.png")) if overlays.is_dir() else []
        row.update(ok=len(written) == 8, overlays=len(written),
                   summary=f"{len(written)} of 8 overlays written")
        return row

    def evaluate(self) -> dict:
        row = self.command("evaluate", [sys.executable, str(EVALUATE), "--weights", str(self.weights), "--device",
                                        self.device, "--output-dir", str(self.work / "evaluation"), "--bootstrap",
                                        "200"])
        if row["rc"] != 0:
            return self.failed(row, f"exit {row['rc']}")
        return {**row, "ok": True, "summary": "exit 0"}

    def scores_agree(self) -> dict:
        row = self.probe("scores-agree", ["scores", "--weights", str(self.weights), "--images",
                                          str(self.data / "train_images64.npz"), "--predictions",
                                          str(self.work / "predictions.csv"), "--device", self.device])
        if "result" in row:
            result = row.pop("result")
            row.update(result, ok=bool(result["ok"]))
            row["summary"] = ", ".join(f"{k} {v:.2g}" for k, v in result["max_p_covid_difference"].items())
        return row

    def two_processes(self) -> dict:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(free_port()), str(TRAIN),
                   *self.flags(self.work / "two-processes"), "--epochs", "1"]
        row = self.command("two-processes-one-gpu", command)
        if self.dry:  # two CPU processes (gloo): they train
            return {**row, "ok": row["rc"] == 0, "summary": f"two CPU processes trained: exit {row['rc']}"}
        import torch

        gpus = torch.cuda.device_count()
        refusal = "2 processes were started on this machine but it has"
        refused = any(refusal in line for line in log_tail(row["log"], 20000).splitlines())
        row["ok"] = (row["rc"] not in (0, None) and refused) if gpus == 1 else row["rc"] == 0
        row["summary"] = "refused in one line, as expected" if refused else f"exit {row['rc']}"
        return row

    def export(self) -> dict:
        if importlib.util.find_spec("onnxruntime") is None:  # the export extra
            return {"ok": True, "skipped": "the export extra (onnx, onnxruntime) is not installed"}
        model_file = self.work / "covid.onnx"
        row = self.command("export", [sys.executable, str(EXPORT), "--weights", str(self.weights), "--onnx",
                                      str(model_file)])
        if row["rc"] != 0:
            return self.failed(row, f"exit {row['rc']}")
        agree = self.probe("export-agree", ["onnx", "--weights", str(self.weights), "--onnx", str(model_file),
                                            "--images", str(self.data / "train_images64.npz")])
        result = agree.get("result") or {}
        row.update(onnx_agreement=result, ok=bool(result.get("ok")),
                   summary=f"ONNX Runtime vs torch: {result.get('max_p_covid_difference_onnx_vs_torch_cpu')}")
        return row

    def backbone(self) -> dict:
        """A standard backbone at the size it is made for: resnet18, 224 px (64 in a dry run), bf16."""
        name = "train-resnet18-224-bf16"
        probe = self.command(f"{name}-import", [sys.executable, "-c", "import torchvision"])
        if probe["rc"] != 0:  # a CUDA build of torchvision beside a CPU torch fails here, not at find_spec
            why = (log_tail(probe["log"], 2000).strip().splitlines() or ["no output"])[-1][:120]
            return {"ok": True, "skipped": f"torchvision does not import ({why}): pip install 'covid_ddp[backbones]'"}
        size, count = (64, 200) if self.dry else (224, 2000)
        data = self.work / f"data-{count}x{size}"
        made = self.probe(f"{name}-data", ["make-data", "--folder", str(data), "--images", str(count),
                                           "--image-size", str(size)])
        if not made["ok"]:
            return made
        return self.train(name, ["--model", "resnet18", "--mixed-precision", "bf16"], "bf16",
                          epochs=1 if self.dry else 2, data=data)

    # --- running one ----------------------------------------------------------------------------

    def command(self, name: str, command: list[str], env: dict | None = None, on_poll=None) -> dict:
        """One child process of the step under way, within that step's cap."""
        started_at = time.time()
        result = self.runner.run(name, command, self.step_cap_s, env=env, on_poll=on_poll)
        return {"command": " ".join(map(str, command[1:])), **result, "started_at": started_at}

    def probe(self, name: str, arguments: list[str]) -> dict:
        row = self.command(name, [sys.executable, str(PROBES), *arguments])
        result = last_result(row["log"]) if row["rc"] == 0 else None
        if result is None:
            return self.failed(row, f"exit {row['rc']}")
        return {**row, "ok": True, "result": result}

    @staticmethod
    def failed(row: dict, why: str) -> dict:
        ended = row.get("timed_out") or row.get("stopped")
        return {**row, "ok": False, "summary": ended or why, "tail": log_tail(row["log"])}


def run_all(check: Check, report: Report, steps: list[Step]) -> None:
    """Each step in turn; a step that raises is a failed row, and the next one runs."""
    for number, step in enumerate(steps, 1):
        needs = step.dry_s if check.dry else step.gpu_s
        why_not = check.runner.why_not_start(needs / 2)
        if why_not:
            report.step(step.name, {"ok": None, "not_run": why_not})
            print(f"gpu_check: [{number}/{len(steps)}] {step.name}: not run ({why_not})", flush=True)
            continue
        print(f"gpu_check: [{number}/{len(steps)}] {step.name} (about {needs:.0f} s; "
              f"{check.runner.time_left():.0f} s of the deadline left) ...", flush=True)
        report.step(step.name, {"ok": None, "not_run": "in progress"})
        check.step_cap_s = step.cap_s
        try:
            row = step.run()
        except Exception:  # noqa: BLE001  (a bug in reading one step's results must not end the check)
            row = {"ok": False, "error": traceback.format_exc()[-3000:]}
        if row.get("stopped"):
            row["ok"] = None  # ended by a signal: not run to the end, not a failure of covid_ddp
        report.step(step.name, row)
        verdict = {True: "ok", False: "FAILED", None: "stopped"}[row.get("ok")]
        print(f"gpu_check: {step.name}: {verdict} in {row.get('seconds', 0)} s"
              f"{': ' + str(row['summary']) if row.get('summary') else ''}"
              f"{' (' + row['skipped'] + ')' if row.get('skipped') else ''}", flush=True)


def targets(report: Report) -> dict:
    """The H100 targets against what this run measured (None where a step did not measure it)."""
    table = (report.steps.get("throughput") or {}).get("table") or {}
    rows = {row["variant"]: row for row in table.get("variants", [])}
    large = rows.get("covid_ddp bf16 b1024", {})
    mcfam = report.steps.get("mcfam-10-epochs") or {}
    measured = {"train_images_per_s_bf16_b1024": large.get("train"),
                "train_vs_original": large.get("train_vs_original"),
                "mcfam_10_epochs_to_weights_s": mcfam.get("seconds_process_start_to_weights"),
                "inference_images_per_s": large.get("inference")}
    below = {"mcfam_10_epochs_to_weights_s"}  # a time: lower is better
    return {key: {"target": goal, "measured": measured[key],
                  "met": None if measured[key] is None else
                  (measured[key] <= goal if key in below else measured[key] >= goal)}
            for key, goal in TARGETS.items()}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, on a small set")
    parser.add_argument("--work-dir", default="runs/gpu_check", help="data, runs and outputs go here")
    parser.add_argument("--output", help="the JSON, rewritten after every step: put it in the folder that is kept "
                        "(default: WORK_DIR/gpu_check.json); each step's log goes beside it, in <name>_logs/")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
                        help="stop starting steps, and end the one running, so the whole check ends within this "
                             f"many seconds (default {DEFAULT_DEADLINE_S})")
    parser.add_argument("--steps", help="only these steps, comma-separated (e.g. the ones a first try left)")
    parser.add_argument("--images", type=int, help="synthetic images (default: 10,000; 400 with --dry-run)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    refusal = gpu_refusal(args.dry_run)
    if refusal:
        print(f"gpu_check: {refusal}", file=sys.stderr)
        return 2
    work = Path(args.work_dir).resolve()
    output = Path(args.output).resolve() if args.output else work / "gpu_check.json"
    logs = output.with_name(f"{output.stem}_logs")
    runner = StepRunner(args.deadline, logs, child_environment(args.dry_run), ROOT)
    runner.handle_signals()
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args, runner, work, logs)
    steps = check.plan()
    if args.steps:
        wanted = args.steps.split(",")
        unknown = sorted(set(wanted) - {step.name for step in steps})
        if unknown:
            print(f"gpu_check: unknown step(s) {', '.join(unknown)}; the steps are "
                  f"{', '.join(step.name for step in steps)}", file=sys.stderr)
            return 2
        steps = [step for step in steps if step.name in wanted]
    report = Report(output, {"dry_run": args.dry_run, "deadline_s": args.deadline, "images": check.images},
                    [step.name for step in steps])
    check.report = report
    report.save()
    estimate = sum(step.dry_s if args.dry_run else step.gpu_s for step in steps)
    print(f"gpu_check: {len(steps)} steps, about {estimate:.0f} s by estimate, --deadline {args.deadline:.0f} s; "
          f"writing {output} after every step", flush=True)
    run_all(check, report, steps)
    report.header.update(seconds=round(runner.elapsed(), 1), stopped_by=runner.stopped_by)
    if not args.dry_run:  # the targets are a GPU's: a CPU rehearsal measures none of them
        report.header["targets"] = targets(report)
    report.save()
    print_summary(report.as_dict(), output)
    return 0 if report.as_dict()["ok"] else 1


def gpu_refusal(dry_run: bool) -> str | None:
    """Why a GPU check cannot run here (a CPU build of torch, no visible GPU), or None."""
    if dry_run:
        return None
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU build: install a CUDA build of torch on the GPU machine, or "
                f"pass --dry-run to rehearse the steps on the CPU")
    if not torch.cuda.is_available():
        return (f"no CUDA GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda}; "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): check the driver with "
                f"nvidia-smi, or pass --dry-run to rehearse the steps on the CPU")
    return None


def child_environment(dry_run: bool) -> dict:
    """The steps' environment: this checkout first on PYTHONPATH (the user's own entries kept after it)."""
    path = os.pathsep.join(part for part in (str(ROOT), os.environ.get("PYTHONPATH")) if part)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    if dry_run:  # the CPU: no GPU even where one is, one thread a process
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


def max_difference(run_a: Path, run_b: Path) -> float:
    import torch

    a, b = (torch.load(run / "COVID_binary_classifier.pth", weights_only=True) for run in (run_a, run_b))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _variant_line(row: dict) -> str:
    if "error" in row:
        return f"{row['variant']}: FAILED"
    inference = "" if row.get("inference") is None else f", inference {row['inference']:.0f}"
    return (f"{row['variant']} (batch {row['batch']}): train {row['train']:.0f}, eval {row['eval']:.0f}"
            f"{inference} images/s")


def print_summary(report: dict, output: Path) -> None:
    print(f"\n{'step':<26}{'ok':>7}{'seconds':>9}  key figures")
    for name, step in report["steps"].items():
        verdict = {True: "ok", False: "FAILED", None: "-"}[step.get("ok")]
        detail = step.get("summary") or step.get("skipped") or step.get("not_run") or ""
        print(f"{name:<26}{verdict:>7}{str(step.get('seconds', '')):>9}  {detail}")
    for key, target in report.get("targets", {}).items():
        if target["measured"] is not None:
            print(f"target {key}: {target['target']:,}, measured {target['measured']:,.2f} "
                  f"({'met' if target['met'] else 'not met'})")
    state = "all steps as expected" if report["ok"] else ("SOME STEPS FAILED" if any(
        step.get("ok") is False for step in report["steps"].values()) else "NOT EVERY STEP RAN")
    print(f"\n{state} in {report.get('seconds')} s; wrote {output}")


if __name__ == "__main__":
    sys.exit(main())
