"""Choices that depend on the hardware a run lands on, made in one place.

The device kind and the precision are agreed by every process of a job before its group
forms (``distributed.exchange_before_group`` carries each process's ``local_view``): ranks that
chose alone could average fp16-scaled with unscaled gradients, or fail to form a group.
Each speed choice was measured with ``benchmarks/throughput.py`` (figures in
docs/performance.md); where a trick does not pay on a device it stays off there.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from ..errors import UserError


def local_view(cpu: bool) -> dict:
    """What this process would train on, for the processes to agree on one device kind and precision:
    ``device`` ('cuda' or 'cpu'), the precision it computes natively, the precisions it can run."""
    view = {"host": socket.gethostname()}
    if not cpu and torch.cuda.is_available():
        device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        # Native bf16 only on Ampere and newer (compute capability 8); emulated bf16 on a V100 or
        # T4 is slower than fp16, which runs with a GradScaler.
        native = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
        with torch.cuda.device(device):  # (the check may make a tensor: on this process's GPU, not GPU 0)
            runs = ["no", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
        return {**view, "device": "cuda", "native": native, "runs": runs}
    # On a CPU with AVX512-BF16 (docs/performance.md) bf16 autocast trained 2.2x faster
    # than fp32; without native bf16 it is emulated, and slower. fp16 autocast needs a GPU.
    return {**view, "device": "cpu", "native": "bf16" if cpu_has_native_bf16() else "no", "runs": ["no", "bf16"]}


def agree_device(views: list[dict]) -> None:
    """Every process trains on the same kind of device: a group cannot mix NCCL and gloo ranks."""
    on_gpus = [rank for rank, view in enumerate(views) if view["device"] == "cuda"]
    if on_gpus and len(on_gpus) < len(views):
        without = [rank for rank in range(len(views)) if rank not in on_gpus]
        raise UserError(f"{_processes(on_gpus, views)} would train on CUDA GPUs but {_processes(without, views)} "
                        "found no usable GPU; every process of a job trains on the same kind of device: give "
                        "those machines GPUs, or pass --cpu to train on CPU processes everywhere")


def agree_precision(views: list[dict], flag: str | None, recorded: str | None = None) -> tuple[str, str | None]:
    """(the one precision every process trains in, a line saying why when it is not what was asked).

    ``--mixed-precision`` decides, else the accelerate config's (``accelerate launch`` passes it in
    ACCELERATE_MIXED_PRECISION), else ``auto``: the best that every process computes natively
    (bf16; fp16 when some GPU lacks bf16; else fp32). The config's ``no`` is also what
    ``accelerate launch`` sets when nobody asked, so it means auto: fp32 is ``--mixed-precision
    no``. A precision asked for is kept wherever every process can run it; where some cannot
    (fp16 on a CPU), auto's choice replaces it, and the line says so. (On real chest X-rays,
    patient-level, bf16 scored as fp32 did over 5 seeds: docs/performance.md.)

    ``recorded``: the precision of the run being resumed. auto keeps it wherever every process can
    run it (a requeue onto other GPUs goes on as it trained), else chooses anew and says so.
    """
    requested = requested_precision(flag)
    natives = [view["native"] for view in views]
    best = "bf16" if set(natives) == {"bf16"} else "fp16" if all(v["device"] == "cuda" for v in views) else "no"
    if requested == "auto" and recorded is not None:
        return _resumed_precision(views, recorded, best)
    if requested == "auto":
        others = [rank for rank, native in enumerate(natives) if native != best]
        if not others:
            return best, None
        return best, (f"--mixed-precision auto: {_named(best)} on every process, the best all of them compute "
                      f"natively ({_processes(others, views)} would compute {_named(natives[others[0]])})")
    unable = [rank for rank, view in enumerate(views) if requested not in view["runs"]]
    if not unable:
        return requested, None
    asked = f"--mixed-precision {requested}" if flag else f"the accelerate config's mixed_precision {requested}"
    kind = "GPU" if views[unable[0]]["device"] == "cuda" else "CPU"
    where = f"{_processes(unable, views)} ({kind})" if len(views) > 1 else f"this {kind}"
    return best, f"{asked} cannot run on {where}; training in {_named(best)} (auto's choice) instead"


def requested_precision(flag: str | None) -> str:
    """What was asked: --mixed-precision, else the accelerate config's (its 'no' is also what
    ``accelerate launch`` sets when nobody asked, so it means auto), else auto."""
    from_config = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return flag or (from_config if from_config != "no" else "auto")


def launcher_precision_note(flag: str | None, precision: str) -> str | None:
    """A line of ours where ``accelerate launch`` said one precision and another runs: it passes
    its config's mixed_precision, and 'no' (also what it sets when nobody asked) is read as auto."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if flag or launcher != "no" or precision == "no":
        return None
    return (f"accelerate launch passed mixed_precision 'no', which covid_ddp reads as 'choose' (it is also what "
            f"accelerate launch sets when nobody asked): training in {_named(precision)}; --mixed-precision no "
            "trains in fp32")


def _resumed_precision(views: list[dict], recorded: str, best: str) -> tuple[str, str | None]:
    unable = [rank for rank, view in enumerate(views) if recorded not in view["runs"]]
    if not unable:
        return recorded, None
    kind = "GPU" if views[unable[0]]["device"] == "cuda" else "CPU"
    return best, (f"--mixed-precision auto: the resumed run trained in {_named(recorded)}, which "
                  f"{_processes(unable, views)} ({kind}) cannot run; it goes on in {_named(best)} (recorded in config.json "
                  "as a change)")


def _named(precision: str) -> str:
    return "fp32" if precision == "no" else precision


def _processes(ranks: list[int], views: list[dict]) -> str:
    """'process 1 (on node2)', 'processes 0, 1 (on node1)'."""
    hosts = ", ".join(dict.fromkeys(views[rank]["host"] for rank in ranks))
    return f"process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} (on {hosts})"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: torch's (private) checks where it has them, else the CPU's flags (Linux)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None for check in checks):
        return any(check() for check in checks if check is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tune_backends(device: torch.device) -> None:
    """cuDNN autotuning: every training batch has the same shape, so the search pays once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

