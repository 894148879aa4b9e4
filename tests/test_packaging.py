"""The versions the project claims to run on are the ones CI tests (.ci/floors.txt)."""

from __future__ import annotations

import configparser
import re

from conftest import ROOT


def test_ci_tests_exactly_the_lowest_versions_setup_cfg_claims():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    claimed = dict(re.fullmatch(r"([\w-]+)>=([\w.]+)", line.strip()).groups()
                   for line in config["options"]["install_requires"].strip().splitlines())
    pinned = dict(re.fullmatch(r"([\w-]+)==([\w.]+)", line).groups()
                  for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    assert pinned == claimed
