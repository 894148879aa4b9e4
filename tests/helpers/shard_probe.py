"""Under torchrun: record which rows each rank trains on (2 epochs) and the gathered evaluation.

Usage: shard_probe.py OUT_DIR DATA_DIR. Writes OUT_DIR/rank<R>.json with the training rows
per epoch and, from every rank, the gathered test rows and P(COVID) of a fixed model.
"""

import json
import sys
from pathlib import Path

import torch

from covid_ddp.config import TrainConfig
from covid_ddp.data import load_data_dir, split_indices, to_binary
from covid_ddp.model import Net
from covid_ddp.train import build_accelerator, evaluate, make_loaders, shut_down

out_dir, data_dir = Path(sys.argv[1]), Path(sys.argv[2])


def stage(name):  # where a crash happened, if one does
    print(f"probe: {name}", file=sys.stderr, flush=True)


stage("start")
config = TrainConfig(cpu=True, batch_size=40, eval_batch_size=60)
accelerator = build_accelerator(config)
data = load_data_dir(data_dir)
targets = to_binary(data.labels)
split = split_indices(targets, config.test_size, config.val_size)
loaders = make_loaders(torch.from_numpy(data.images), torch.from_numpy(targets), split, config, accelerator.num_processes)
stage("loaders made")
torch.manual_seed(0)
model = Net()
model.set_normalization(100.0, 50.0)
model, train_loader, test_loader = accelerator.prepare(model, loaders[0], loaders[2])

stage("prepared")
epochs = []
for epoch in (1, 2):
    train_loader.set_epoch(epoch)
    epochs.append([row for _, _, rows in train_loader for row in rows.tolist()])
stage("shards read")
result = evaluate(model, test_loader, accelerator)
stage("evaluated")
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps({
    "train_rows": epochs, "split_train": split.train.tolist(), "split_test": split.test.tolist(),
    "test_rows": result.rows.tolist(), "test_p_covid": result.p_covid.tolist(), "test_loss": result.loss,
}))
stage("written")
del model, train_loader, test_loader
shut_down(accelerator)
stage("ended")
