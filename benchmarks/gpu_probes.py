"""The GPU check's own measurements, each run as a child process by ``benchmarks/gpu_check.py``.

    python benchmarks/gpu_probes.py machine
    python benchmarks/gpu_probes.py make-data --folder DIR --images N [--image-size S]
    python benchmarks/gpu_probes.py scores --weights PTH --images NPZ --predictions CSV --device cuda
    python benchmarks/gpu_probes.py onnx --weights PTH --onnx FILE --images NPZ

Each prints one ``RESULT {json}`` line. They run in children, not in the check itself, so that
the check never holds a CUDA context of its own (it would sit in every step's GPU memory) and
can end any of them on its deadline.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "accelerate", "numpy", "scikit-learn", "tensorboard", "torchvision", "timm", "triton",
            "onnx", "onnxscript", "onnxruntime", "psutil")
ENVIRONMENT_PREFIXES = ("NCCL_", "TORCH_", "TORCHINDUCTOR_", "PYTORCH_", "CUDA_", "CUBLAS_", "CUDNN_",
                        "ACCELERATE_", "OMP_")
SOURCE_PARTS = ("covid_ddp", "launch", "benchmarks", "tests/helpers", "setup.cfg", "pyproject.toml",
                "accelerate_config.yaml")
# P(COVID) on the GPU in strict fp32 (TF32 off) against the CPU: the same arithmetic in another
# order, so differences of a few float32 ulps of the logits (about 1e-6) are expected; 1e-4 leaves
# room and still catches a wrong fold, layout or precision (those move P by 1e-2 or more).
STRICT_FP32_TOLERANCE = 1e-4


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# --- machine ------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    record = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
              "cpu_count": os.cpu_count(), "versions": package_versions(), "cuda": torch.version.cuda,
              "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENVIRONMENT_PREFIXES)},
              "source": source_id(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        record.update(gpus=[gpu_properties(index) for index in range(torch.cuda.device_count())],
                      cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())),
                      tf32={"cudnn.allow_tf32 (convolutions)": torch.backends.cudnn.allow_tf32,
                            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                            "float32_matmul_precision": torch.get_float32_matmul_precision()},
                      nvidia_smi=nvidia_smi())
    return record


def gpu_properties(index: int) -> dict:
    import torch

    properties = torch.cuda.get_device_properties(index)
    return {"name": properties.name, "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count}


def nvidia_smi() -> dict:
    """Driver, clocks, power and who else is on the GPU, as nvidia-smi reads them (None where absent)."""
    fields = ("driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,"
              "persistence_mode,compute_mode,mig.mode.current,memory.used")
    found = {"gpus": _smi_rows(["--query-gpu=" + fields], fields.split(","))}
    found["other_processes"] = _smi_rows(["--query-compute-apps=pid,process_name,used_memory"],
                                         ["pid", "process_name", "used_memory"])
    return found


def _smi_rows(query: list[str], names: list[str]) -> list[dict] | str:
    try:
        done = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi could not run: {error}"
    if done.returncode != 0:
        return f"nvidia-smi exit {done.returncode}: {done.stderr.strip()[:200]}"
    return [dict(zip(names, (cell.strip() for cell in line.split(",")))) for line in done.stdout.splitlines() if line]


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def source_id() -> dict:
    """The commit (and whether the tree differs from it) where .git is there, and always a hash of the
    code itself: a copy of the working tree without .git is still identified."""
    found = {"tree_sha256": tree_hash()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=ROOT, timeout=10)
            found.update(commit=commit.stdout.strip(), modified=bool(status.stdout.strip()))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return found


def tree_hash() -> str:
    digest = hashlib.sha256()
    for part in SOURCE_PARTS:
        path = ROOT / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


# --- data ---------------------------------------------------------------------------------------


def make_data(folder: Path, images: int, image_size: int) -> dict:
    """An MCFAM-format folder of synthetic images (seed 3): every step of the check reads this one set."""
    sys.path.insert(0, str(ROOT))
    from covid_ddp.data.store import images_name
    from covid_ddp.data.synthetic import make_synthetic

    folder.mkdir(parents=True, exist_ok=True)
    pixels, labels = make_synthetic(images, seed=3, image_size=image_size)
    np.savez(folder / images_name(image_size), train_images=pixels)
    np.savez(folder / "train_labels.npz", train_labels=labels)
    return {"folder": str(folder), "images": images, "image_size": image_size}


# --- agreement of scores ------------------------------------------------------------------------


def scores(weights: Path, images: Path, predictions: Path, device: str) -> dict:
    """The weights scored on ``device`` in strict fp32 (TF32 off) and with torch's defaults (cuDNN may
    use TF32), each against the CPU; and covid-ddp-predict's CSV (written on ``device`` with the
    defaults) against the CPU. Only the strict comparison is held to a bound: TF32 keeps 10 bits of
    mantissa, and Net's pixel normalisation folded into conv1 scales raw 0-255 pixels, so its
    rounding moves P(COVID) by about 1e-3 (recorded, not asserted)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from covid_ddp import load_model, predict
    from covid_ddp.models.loading import inference_model

    with np.load(images, allow_pickle=False) as archive:
        pixels = archive["train_images"]
    on_cpu = predict(inference_model(load_model(weights, "cpu")), pixels)
    scorer = inference_model(load_model(weights, device))
    on_device_pixels = torch.from_numpy(pixels).to(device)  # the path a set held on the GPU takes
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    strict = predict(scorer, on_device_pixels)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = defaults
    with_defaults = predict(scorer, on_device_pixels)
    with open(predictions) as handle:
        from_csv = np.array([float(row["p_covid"]) for row in csv.DictReader(handle)])
    worst = {"strict_fp32_vs_cpu": _worst(strict, on_cpu), "torch_defaults_vs_cpu": _worst(with_defaults, on_cpu),
             "covid_ddp_predict_csv_vs_cpu": _worst(from_csv, on_cpu)}
    return {"images": len(pixels), "max_p_covid_difference": worst, "tf32_defaults": list(defaults),
            "tolerance_strict_fp32": STRICT_FP32_TOLERANCE,
            "ok": worst["strict_fp32_vs_cpu"] < STRICT_FP32_TOLERANCE and len(from_csv) == len(pixels)}


def _worst(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max()) if len(a) == len(b) else float("inf")


def onnx_agreement(weights: Path, model_file: Path, images: Path) -> dict:
    """ONNX Runtime (CPU) on the exported graph against torch on the CPU, over the first 512 images."""
    import onnxruntime

    sys.path.insert(0, str(ROOT))
    from covid_ddp import load_model, predict

    with np.load(images, allow_pickle=False) as archive:
        pixels = archive["train_images"][:512]
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    graph = session.run(None, {session.get_inputs()[0].name: pixels[:, None].astype(np.float32)})[0][:, 1]
    worst = _worst(graph, predict(load_model(weights, "cpu"), pixels))
    return {"images": len(pixels), "max_p_covid_difference_onnx_vs_torch_cpu": worst, "ok": worst < 1e-4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    sub.add_parser("machine")
    data = sub.add_parser("make-data")
    data.add_argument("--folder", type=Path, required=True)
    data.add_argument("--images", type=int, required=True)
    data.add_argument("--image-size", type=int, default=64)
    agree = sub.add_parser("scores")
    for flag in ("--weights", "--images", "--predictions"):
        agree.add_argument(flag, type=Path, required=True)
    agree.add_argument("--device", default="cuda")
    exported = sub.add_parser("onnx")
    for flag in ("--weights", "--onnx", "--images"):
        exported.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    if args.probe == "machine":
        emit(machine())
    elif args.probe == "make-data":
        emit(make_data(args.folder, args.images, args.image_size))
    elif args.probe == "scores":
        emit(scores(args.weights, args.images, args.predictions, args.device))
    else:
        emit(onnx_agreement(args.weights, args.onnx, args.images))


if __name__ == "__main__":
    main()
