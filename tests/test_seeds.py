"""scripts/seeds.py: mean and spread over seeds (the training runs themselves are tested elsewhere)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("seeds", ROOT / "scripts" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def test_summary_is_mean_and_sample_std_and_none_where_a_run_lacks_the_metric():
    runs = [{"accuracy": 0.90, "roc_auc": 0.95, "specificity": None},
            {"accuracy": 0.94, "roc_auc": 0.97, "specificity": 0.8}]
    summary = seeds.summarise(runs)
    assert summary["accuracy"]["mean"] == pytest.approx(0.92)
    assert summary["accuracy"]["std"] == pytest.approx(0.0282843, abs=1e-6)  # n - 1
    assert summary["specificity"] is None, "undefined in one run: no mean over the others"
    table = seeds.format_summary(summary)
    assert "accuracy" in table and "0.920" in table and "n/a" in table
