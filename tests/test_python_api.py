"""The Python API: docs/python-api.md's code, run as written (train in this process, evaluate,
predict, then two CPU processes through accelerate's notebook_launcher), and what the calls return."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT, clean_env

from covid_ddp import TrainConfig, TrainedRun, evaluate
from covid_ddp.training.trainer import train

PAGE = ROOT / "docs" / "python-api.md"


def test_the_python_api_page_runs_as_written(tmp_path):
    code = "\n".join(re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S))
    (tmp_path / "page.py").write_text(code)
    done = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    said = done.stdout
    assert re.search(r"runs/api-demo/COVID_binary_classifier.pth: test ROC AUC \d\.\d{3} at threshold", said), said
    assert "evaluation-val/evaluation.json" in said and re.search(r"called COVID: \[[01, ]+\]", said), said
    both = sorted(re.findall(r"process (\d): \S*runs/api-two/COVID_binary_classifier.pth, test ROC AUC (\d\.\d+)", said))
    assert [rank for rank, _ in both] == ["0", "1"] and both[0][1] == both[1][1], said
    assert json.loads((tmp_path / "runs" / "api-two" / "config.json").read_text())["distributed"]["num_processes"] == 2


def test_train_returns_the_run_and_a_finished_run_as_it_is(small_data, tmp_path):
    folder = tmp_path / "run"
    config = TrainConfig(data_dir=[str(small_data)], output_dir=str(folder), epochs=1, batch_size=40, bootstrap=0,
                         log_images_every=0, audit="no")
    run = train(config)
    assert isinstance(run, TrainedRun) and run.folder == folder and run.weights == folder / "COVID_binary_classifier.pth"
    assert run.metrics == json.loads((folder / "metrics.json").read_text())["test"]
    assert run.config.batch_size == 40 and run.config.image_size == 64, "as the run settled it"
    weights_before = run.weights.read_bytes()
    again = train(TrainConfig(**{**config.to_dict(), "resume": "auto"}))
    assert again.metrics == run.metrics and again.weights.read_bytes() == weights_before
    result = evaluate(run.weights, split="test", bootstrap=0)
    assert result.folder == folder / "evaluation-test" and result.metrics["n"] == run.metrics["n"]
    assert result.metrics["roc_auc"] == run.metrics["roc_auc"], "the same weights on the same test split"
