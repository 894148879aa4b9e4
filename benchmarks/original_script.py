"""The original single-script classifier, as its users run it: the reference for whole-run timings.

    python benchmarks/original_script.py --data-dir DIR [--epochs 10]

The seed recipe (the original README), with the two MCFAM files read from DIR instead of
downloaded: classes 0/1 -> non-COVID, 2/3 -> COVID; a stratified 70/30 split with
random_state 42; a per-item Dataset converting each image to a float tensor;
DataLoader(batch 100, shuffle, one worker), as ``benchmarks/throughput.py``'s re-implementation
of it; the four-block Net; Adam 1e-3; ReduceLROnPlateau(patience 2, factor 0.6) stepped on the
test loss after every epoch; fp32 on the CPU (or the GPU, if there is one); the weights saved
to COVID_binary_classifier.pth. Nothing of covid_ddp is imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset


class XrayDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return torch.tensor(self.images[index], dtype=torch.float32).unsqueeze(0), int(self.labels[index])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, 1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, 1), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 3, 1), nn.BatchNorm2d(128)
        self.conv4, self.bn4 = nn.Conv2d(128, 256, 3, 1), nn.BatchNorm2d(256)
        self.dropout = nn.Dropout(0.7)
        self.fc1, self.fc2 = nn.Linear(256 * 2 * 2, 512), nn.Linear(512, 2)

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3), (self.conv4, self.bn4)):
            x = F.max_pool2d(F.relu(bn(conv(x))), 2)
        x = F.relu(self.dropout(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def train(model, device, loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        if batch_idx % 20 == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(loader.dataset)} "
                  f"({100.0 * batch_idx / len(loader):.0f}%)]\tLoss: {loss.item():.6f}")


def test(model, device, loader):
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(dim=1).eq(target).sum().item()
    test_loss /= len(loader.dataset)
    print(f"Test set: Average loss: {test_loss:.4f}, Accuracy: {100.0 * correct / len(loader.dataset):.2f}% "
          "[COVID Detection]")
    return test_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with train_images64.npz and train_labels.npz")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output", default="COVID_binary_classifier.pth")
    args = parser.parse_args()
    torch.manual_seed(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = np.load(Path(args.data_dir) / "train_images64.npz", allow_pickle=False)["train_images"]
    labels = np.load(Path(args.data_dir) / "train_labels.npz", allow_pickle=False)["train_labels"]
    binary = (labels.argmax(axis=1) >= 2).astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, binary, test_size=0.3, random_state=42,
                                                        stratify=binary)
    train_loader = DataLoader(XrayDataset(x_train, y_train), batch_size=100, shuffle=True, num_workers=1)
    test_loader = DataLoader(XrayDataset(x_test, y_test), batch_size=100, num_workers=1)
    model = Net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=2, factor=0.6)
    for epoch in range(1, args.epochs + 1):
        train(model, device, train_loader, optimizer, epoch)
        scheduler.step(test(model, device, test_loader))
    torch.save(model.state_dict(), args.output)


if __name__ == "__main__":
    main()
