# A small ResNet-style model for the export test: a conv stem, one residual block whose skip
# connection lives inside the block (so the model is not an nn.Sequential), pooling and a head.
import torch
import torch.nn as nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.dropout(self.bn2(self.conv2(y)))
        return torch.relu(x + y)


class SmallResNet(nn.Module):
    """image > 0: the input is a flat vector of in_channels x image x image values (a CSV row)."""

    def __init__(self, channels: int = 8, classes: int = 10, in_channels: int = 1,
                 image: int = 0):
        super().__init__()
        unflatten = [nn.Unflatten(1, (in_channels, image, image))] if image > 0 else []
        self.stem = nn.Sequential(*unflatten, nn.Conv2d(in_channels, channels, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.block = ResidualBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(4 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.block(self.stem(x)))))


class FlattensInForward(SmallResNet):
    """Calls torch.flatten between children: halves cut from it cannot reproduce it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.block(self.stem(x))), 1) * 2)



# An nn.Sequential instance (for --model small_resnet.py:MLP): 64 features, 2 classes.
MLP = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
