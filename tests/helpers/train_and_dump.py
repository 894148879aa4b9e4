"""Run covid_ddp training, and let every rank also dump the weights it ends with.

Usage (under any launcher): train_and_dump.py DUMP_DIR [covid-ddp-train flags...]
Each rank writes DUMP_DIR/rank<R>.pt, so a test can check that all ranks agree.
"""

import sys
from pathlib import Path

import torch

from covid_ddp import checkpoint, train

dump_dir = Path(sys.argv[1])
original_export = checkpoint.export_weights


def export_and_dump(accelerator, model, output_dir):
    state = accelerator.unwrap_model(model).state_dict()
    dump_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, dump_dir / f"rank{accelerator.process_index}.pt")
    return original_export(accelerator, model, output_dir)


checkpoint.export_weights = export_and_dump
sys.exit(train.main(sys.argv[2:]))
