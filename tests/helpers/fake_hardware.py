"""Run covid-ddp-train with one process seeing other hardware than it has.

Usage (under torchrun): fake_hardware.py RANK:KEY=VALUE[,KEY=VALUE...][;RANK:...] [covid-ddp-train flags...]
The process of each rank named reports the changed view (hardware.local_view) to the others, as a
machine with another CPU or GPU would: e.g. ``1:native=no`` (no native bf16), ``1:device=cuda``.
"""

import os
import sys

from covid_ddp.commands.train import main
from covid_ddp.training import hardware

changes = dict(spec.split(":") for spec in sys.argv[1].split(";"))
real_view = hardware.local_view


def local_view(cpu):
    view = real_view(cpu)
    mine = changes.get(os.environ.get("RANK", "0"))
    if mine:
        view.update(change.split("=") for change in mine.split(","))
    return view


hardware.local_view = local_view
sys.exit(main(sys.argv[2:]))
