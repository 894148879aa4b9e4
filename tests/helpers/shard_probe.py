"""Under torchrun: record which rows each rank trains on (2 epochs) and the gathered evaluation.

Usage: shard_probe.py OUT_DIR DATA_DIR STORE_DIR. Writes OUT_DIR/rank<R>.json with the training
rows per epoch (with the set on the device, in host memory on the DataLoader path, and mapped
from STORE_DIR's store with 2 DataLoader workers) and, from every rank, the gathered test rows
and P(COVID) of a fixed model.
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.splits import split_indices
from covid_ddp.data.tensors import dataset_tensors
from covid_ddp.models.net import Net
from covid_ddp.training.config import TrainConfig
from covid_ddp.training.engine import evaluate
from covid_ddp.training.loader import balanced_weights
from covid_ddp.training.preparation import make_loaders
from covid_ddp.training.session import build_accelerator, shut_down

out_dir, data_dir, store_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])


def stage(name):  # where a crash happened, if one does
    print(f"probe: {name}", file=sys.stderr, flush=True)


stage("start")
config = TrainConfig(cpu=True, batch_size=40, eval_batch_size=60)
accelerator = build_accelerator(config)
data = load_data_dir(data_dir)
targets = to_binary(data.labels)
split = split_indices(targets, config.test_size, config.val_size)
images, targets = torch.from_numpy(data.images), torch.from_numpy(targets)
ranks = dict(num_processes=accelerator.num_processes, process_index=accelerator.process_index)
loaders = make_loaders(images, targets, split, config, **ranks, on_device=True)
dataloader_path = make_loaders(images, targets, split, config, **ranks, on_device=False)[0]
mapped = load_data_dir(store_dir).images  # the same images, as a store mapped read-only
mapped_images, _ = dataset_tensors(mapped, targets.numpy(), torch.device("cpu"), on_device=False)
# On this rank's own device (accelerate's cpu:0 in a multi-process CPU job): still the mapping.
on_rank_device, _ = dataset_tensors(mapped, targets.numpy(), accelerator.device, on_device=True)
workers = make_loaders(mapped_images, targets, split, dataclasses.replace(config, workers=2), **ranks,
                       on_device=False)[0]
# --balance-sources with three made-up sources: the draw must be sharded like the permutation.
weights = balanced_weights(split.train % 3, targets.numpy()[split.train])
balanced = make_loaders(images, targets, split, config, **ranks, on_device=True, weights=weights)[0]
balanced_dataloader = make_loaders(images, targets, split, config, **ranks, on_device=False, weights=weights)[0]
stage("loaders made")
torch.manual_seed(0)
model = Net()
model.set_normalization(100.0, 50.0)
model, test_loader = accelerator.prepare(model, loaders[2])  # the training loaders shard themselves
train_loader = loaders[0]

stage("prepared")


def rows_per_epoch(loader):
    epochs = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        epochs.append([row for _, _, rows in loader for row in rows.tolist()])
    return epochs


epochs = rows_per_epoch(train_loader)
dataloader_epochs = rows_per_epoch(dataloader_path)
# Rows and pixels from the workers: the images must be the rows' own images.
workers_epochs = rows_per_epoch(workers)
workers_pixels_match = all(torch.equal(batch, images[rows].unsqueeze(1)) for batch, _, rows in workers)
balanced_epochs, balanced_dataloader_epochs = rows_per_epoch(balanced), rows_per_epoch(balanced_dataloader)
stage("shards read")
result = evaluate(model, test_loader, accelerator)
stage("evaluated")
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps({
    "train_rows": epochs, "train_rows_dataloader": dataloader_epochs, "train_rows_store_workers": workers_epochs,
    "store_is_mapped": type(mapped).__name__ == "memmap", "store_workers_pixels_match": workers_pixels_match,
    "store_not_copied_on_rank_device": on_rank_device.data_ptr() == mapped.ctypes.data,
    "balanced": balanced_epochs, "balanced_dataloader": balanced_dataloader_epochs, "weights": weights.tolist(), "split_train": split.train.tolist(), "split_test": split.test.tolist(),
    "test_rows": result.rows.tolist(), "test_p_covid": result.p_covid.tolist(), "test_loss": result.loss,
}))
stage("written")
del model, train_loader, test_loader, dataloader_path, balanced, balanced_dataloader, workers
shut_down(accelerator)
stage("ended")
