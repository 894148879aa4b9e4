"""Run covid_ddp training, and let every rank also dump the weights it ends with.

Usage (under any launcher): train_and_dump.py DUMP_DIR [covid-ddp-train flags...]
Each rank writes DUMP_DIR/rank<R>.pt (the consolidated weights it hands to the run folder,
computed from its own model), so a test can check that all ranks agree.
"""

import sys
from pathlib import Path

import torch

from covid_ddp.commands.train import main
from covid_ddp.training.run_folder import RunFolder

dump_dir = Path(sys.argv[1])
original_write = RunFolder.write_outputs


def write_and_dump(self, decision, weights, *args, **kwargs):
    dump_dir.mkdir(parents=True, exist_ok=True)
    torch.save(weights, dump_dir / f"rank{self.accelerator.process_index}.pt")
    return original_write(self, decision, weights, *args, **kwargs)


RunFolder.write_outputs = write_and_dump
sys.exit(main(sys.argv[2:]))
