"""benchmarks/whole_run.py's floor: the parts every default run pays, measured by a script run in a
fresh process (nothing else would notice when it stops running)."""

from __future__ import annotations

import sys

import numpy as np
from conftest import ROOT

from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import SplitPlan, make_split

sys.path.insert(0, str(ROOT / "benchmarks"))

import whole_run  # noqa: E402  (benchmarks/ is not a package)


def test_the_floor_times_each_part_in_a_fresh_process():
    floor = whole_run.measure_floor(test_images=8, repeats=1)
    assert list(floor) == ["import torch", "first optimizer", "fp32 test scoring"]
    assert all(seconds > 0 for seconds in floor.values())


def test_the_floor_scores_as_many_images_as_the_default_test_split(tmp_path):
    classes = np.arange(1001) % 4  # (an odd count: the rounding counts)
    np.savez(tmp_path / "train_labels.npz", train_labels=np.eye(4, dtype=np.uint8)[classes])
    assert whole_run.held_out_image_count(tmp_path) == len(make_split(to_binary(np.eye(4)[classes]), SplitPlan()).test)
