"""The versions the project claims to run on are the ones CI tests (.ci/floors.txt)."""

from __future__ import annotations

import configparser
import re

from conftest import ROOT


def test_ci_tests_exactly_the_lowest_versions_setup_cfg_claims():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line for section in (config["options"]["install_requires"],
                                  config["options.extras_require"]["backbones"],
                                  config["options.extras_require"]["timm"],
                                  config["options.extras_require"]["mlflow"],
                                  config["options.extras_require"]["wandb"])
             for line in section.strip().splitlines()]
    claimed = dict(re.fullmatch(r"([\w-]+)>=([\w.]+)", line.strip()).groups() for line in lines)
    pinned = dict(re.fullmatch(r"([\w-]+)==([\w.]+)", line).groups()
                  for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    assert pinned == claimed
