"""A few optimizer steps through covid_ddp's real training pieces, in float64, then save the weights.

Usage (python or torchrun): step_probe.py OUT.pt DATA_DIR BATCH_SIZE GRAD_ACCUM SYNC_BN FREEZE_BN
Float64 removes float32 round-off (and the max-pool near-ties it flips), so that 2 processes x
half batches and 1 process x full batches must agree to ~1e-10 if gradients are synced right.
FREEZE_BN=1 keeps BatchNorm on its running statistics: micro-batches of gradient accumulation
see other batch statistics than one full batch, so only with frozen statistics are they equal.
"""

import sys
from pathlib import Path

import torch

from covid_ddp.config import TrainConfig
from covid_ddp.data import load_data_dir, pixel_statistics, to_binary
from covid_ddp.splits import split_indices
from covid_ddp.model import Net
from covid_ddp.sync_batchnorm import convert_sync_batchnorm
from covid_ddp.train import build_accelerator, make_loaders, shut_down, train_one_epoch

out, data_dir, batch_size, accum, sync_bn, freeze_bn = sys.argv[1:7]


class FrozenBatchNormNet(Net):
    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        return self


config = TrainConfig(cpu=True, batch_size=int(batch_size), grad_accum_steps=int(accum), dropout=0.0,
                     eval_batch_size=60, log_every=1000)
accelerator = build_accelerator(config)
data = load_data_dir(Path(data_dir))
targets = to_binary(data.labels)
split = split_indices(targets, config.test_size, config.val_size)
# Only the first 120 training rows: a few steps are enough and keep this quick.
split.train = split.train[:120]
train_loader, _, _ = make_loaders(torch.from_numpy(data.images), torch.from_numpy(targets), split, config,
                                  num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                  on_device=True)
torch.manual_seed(0)
model = (FrozenBatchNormNet if freeze_bn == "1" else Net)(dropout=0.0)
model.set_normalization(*pixel_statistics(data.images, split.train))
if sync_bn == "1":
    model = convert_sync_batchnorm(model, accelerator.device)
model = model.double()
optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
train_loader.set_epoch(1)
train_one_epoch(model, optimizer, train_loader, accelerator, config, epoch=1, train_size=len(split.train))
if accelerator.is_main_process:
    torch.save(accelerator.unwrap_model(model).state_dict(), out)
del model, optimizer, train_loader
shut_down(accelerator)
