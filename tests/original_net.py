"""The original script's ``Net``, as its users have it: written out here from the recipe (the
seed README), independent of covid_ddp, to check that weights travel both ways.

Raw 0-255 pixels in, no normalisation; attributes conv1..conv4, bn1..bn4, dropout, fc1, fc2.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3, stride=1)
        self.bn4 = nn.BatchNorm2d(256)
        self.dropout = nn.Dropout(0.7)
        self.fc1 = nn.Linear(256 * 2 * 2, 512)
        self.fc2 = nn.Linear(512, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.dropout(self.fc1(x)))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm non-trivial running statistics (a few training-mode passes), then eval mode."""
    torch.manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randint(0, 256, (16, 1, 64, 64)).float())
    return net.eval()
