"""The GPU check keeps what it measured: a stop, a deadline or a failing variant loses nothing finished.

No GPU here: the check's own machinery (a SIGTERM part-way, --deadline, ending a step's whole
process tree, the throughput table written after every variant) runs with --dry-run and real
child processes, torchrun's workers included.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
GPU_CHECK = BENCHMARKS / "gpu_check.py"
sys.path.insert(0, str(BENCHMARKS))

import check_runner  # noqa: E402  (benchmarks/ is not a package)
import throughput  # noqa: E402


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--dry-run" in lines[0] and ("CPU build" in lines[0] or "no CUDA GPU" in lines[0])
    assert not (tmp_path / "work").exists(), "nothing made before refusing"


def test_sigterm_part_way_keeps_finished_steps_and_ends_the_running_one_whole(tmp_path):
    """SIGTERM while torchrun's two workers train: the check ends within seconds, none of the step's
    processes is left (a GPU held by an orphan would spoil a second try), the finished steps stay in
    the JSON and the rest are marked not run."""
    work, output = tmp_path / "work", tmp_path / "kept" / "gpu_check.json"
    check = subprocess.Popen([sys.executable, str(GPU_CHECK), "--dry-run", "--work-dir", str(work), "--output",
                              str(output), "--steps", "data,two-processes-one-gpu,export"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(processes_mentioning(str(work / "two-processes"))) < 3:  # torchrun and its 2 workers
            assert check.poll() is None and time.monotonic() < deadline, check.stdout.read()
            time.sleep(0.2)
        in_progress = read_report(output)
        assert in_progress["steps"]["data"]["ok"] is True, "a finished step is on disk before the next ends"
        assert in_progress["steps"]["two-processes-one-gpu"]["not_run"] == "in progress"
        check.send_signal(signal.SIGTERM)
        printed, _ = check.communicate(timeout=60)
    finally:
        if check.poll() is None:
            check.kill()
    assert check.returncode == 1, printed
    report = read_report(output)
    steps = report["steps"]
    assert steps["data"]["ok"] is True and steps["data"]["result"]["images"] == 400
    assert steps["two-processes-one-gpu"]["ok"] is None and "SIGTERM" in steps["two-processes-one-gpu"]["stopped"]
    assert steps["export"] == {"ok": None, "not_run": "the check was stopped (SIGTERM) before this step"}
    assert report["complete"] is False and report["ok"] is False and report["stopped_by"] == "SIGTERM"
    assert not processes_mentioning(str(work)), "no worker of the ended step is left running"
    assert (output.parent / "gpu_check_logs" / "data.log").is_file(), "each step's log is kept beside the JSON"
    assert "data: ok" in printed and "400 synthetic 64 px images in" in printed, "each step prints its figures"


def test_a_deadline_too_short_for_a_step_leaves_it_not_run_and_the_json_whole(tmp_path):
    output = tmp_path / "gpu_check.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run", "--work-dir", str(tmp_path / "work"),
                           "--output", str(output), "--deadline", "30", "--steps", "data,throughput"],
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30, "the whole check ends within its deadline"
    assert done.returncode == 1, done.stdout + done.stderr
    report = read_report(output)
    assert report["steps"]["data"]["ok"] is True
    throughput_row = report["steps"]["throughput"]
    assert throughput_row["ok"] is None and "--deadline 30" in throughput_row["not_run"]
    assert report["complete"] is False and report["ok"] is False
    assert "NOT EVERY STEP RAN" in done.stdout


def test_an_unknown_step_is_named_with_the_steps_there_are(tmp_path):
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run", "--work-dir", str(tmp_path),
                           "--steps", "train-bf17"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown step(s) train-bf17" in done.stderr and "train-bf16" in done.stderr


def test_a_step_past_its_time_is_ended_with_the_processes_it_started_in_other_sessions(tmp_path):
    """A child that starts a grandchild in a session of its own (as torchrun starts its workers):
    both are ended when the step runs out of time."""
    marker = f"grandchild-{uuid.uuid4().hex}"
    spawn = ("import subprocess, sys, time; "
             f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}'], "
             "start_new_session=True); time.sleep(120)")
    runner = check_runner.StepRunner(deadline_s=600, logs=tmp_path, env=None, cwd=tmp_path)
    started = time.monotonic()
    result = runner.run("sleeper", [sys.executable, "-c", spawn], cap_s=3)
    assert result["rc"] is None and "ended after 3 s" in result["timed_out"]
    assert time.monotonic() - started < 3 + check_runner.GRACE_S + 5
    assert not processes_mentioning(marker), "the grandchild in its own session was ended too"


def test_the_report_on_disk_is_valid_json_after_every_change(tmp_path):
    path = tmp_path / "kept" / "report.json"
    report = check_runner.Report(path, {"dry_run": True}, ["a", "b"])
    report.save()
    assert read_report(path)["steps"]["b"] == {"ok": None, "not_run": "not reached yet"}
    report.step("a", {"ok": True, "seconds": 1.0})
    on_disk = read_report(path)
    assert on_disk["steps"]["a"]["ok"] is True and on_disk["complete"] is False and on_disk["ok"] is False
    report.step("b", {"ok": True})
    assert read_report(path)["ok"] is True and read_report(path)["complete"] is True
    assert [p.name for p in path.parent.iterdir()] == ["report.json"], "no temporary file left behind"


def throughput_args(tmp_path, **changes) -> argparse.Namespace:
    args = throughput.build_parser().parse_args(["--precision", "both", "--repeats", "1", "--steps", "2",
                                                 "--warmup-steps", "1", "--eval-images", "100",
                                                 "--json", str(tmp_path / "table.json")])
    return argparse.Namespace(**{**vars(args), **changes})


def test_a_failing_throughput_variant_is_a_row_and_the_others_still_run(tmp_path, monkeypatch):
    """The variants' own processes are replaced here (their speed is not the point): one fails, and the
    table written after each variant already holds the ones before it."""
    args = throughput_args(tmp_path)
    seen_on_disk = []

    def fake_worker(variant, worker_args, mode_flags=None):
        table = tmp_path / "table.json"
        seen_on_disk.append([row["variant"] for row in json.loads(table.read_text())["variants"]]
                            if table.is_file() else [])
        if variant.name == "covid_ddp fp32":
            raise throughput.VariantFailed("covid_ddp fp32 failed (exit 1):\nTypeError: injected")
        return {"train": 100.0 * (len(seen_on_disk)), "eval": 300.0, "inference": None, "eval_batch": 100,
                **({"data_wait_share": 0.5} if variant.trainer == "original" else {})}

    monkeypatch.setattr(throughput, "run_worker", fake_worker)
    with pytest.raises(SystemExit, match="1 of 3 variant"):
        throughput.measure_speed(args)
    assert seen_on_disk == [[], ["original"], ["original", "covid_ddp fp32"]]
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {row["variant"]: row for row in table["variants"]}
    assert table["complete"] is True and "TypeError: injected" in rows["covid_ddp fp32"]["error"]
    assert rows["covid_ddp bf16"]["train_vs_original"] == pytest.approx(3.0), "measured after the failure"
    assert rows["covid_ddp bf16"]["mfu_peak"] == "bf16" and rows["original"]["mfu_peak"] == "fp32"


@pytest.mark.parametrize("device, seconds_at, size", [
    ("cpu", {256: 0.026, 512: 0.21}, 512),  # bf16 emulated (a CPU without AVX512-BF16): stops at 0.1 s
    ("cpu", {256: 1e-3, 512: 2e-3, 1024: 0.02, 2048: 0.05}, 2048),  # fp32: the CPU's largest
    ("cuda", {n: 1e-4 for n in (256, 512, 1024, 2048, 4096, 8192)}, 8192),
])
def test_the_matmul_peak_grows_its_product_only_until_it_takes_a_tenth_of_a_second(monkeypatch, device,
                                                                                    seconds_at, size):
    """A precision the device only emulates used to be timed at 2048 x 2048: minutes on a CPU without
    native bf16, past the suite's timeout."""
    sizes = []
    monkeypatch.setattr(throughput, "matmul_seconds", lambda n, dtype, dev: sizes.append(n) or seconds_at[n])
    flops = throughput.matmul_peak(device, "bf16")
    assert sizes[-1] == size and sizes == sorted(sizes) and flops == pytest.approx(2 * size**3 / seconds_at[size])


def test_the_gpu_variants_put_the_targets_batch_first_and_the_reference_second(tmp_path):
    names = [v.name for v in throughput.variants_for(throughput_args(tmp_path, device="cuda", compile=True))]
    assert names[:2] == ["covid_ddp bf16 b1024", "original"]
    assert "covid_ddp bf16 b1024 compiled" in names and "covid_ddp fp32" in names


def test_fp32_mfu_is_set_against_the_tf32_peak_where_cudnn_computes_in_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert throughput.peak_precision("cuda", "fp32") == "tf32"
    assert throughput.peak_precision("cpu", "fp32") == "fp32" and throughput.peak_precision("cuda", "bf16") == "bf16"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert throughput.peak_precision("cuda", "fp32") == "fp32"
