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
    def __init__(self, channels: int = 8, classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2))
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


def traced_with_dropout():
    """A traced module with dropout (written by the test as a .pt with cleave metadata)."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Dropout(0.5))
    return torch.jit.trace(model.eval(), torch.randn(1, 1, 28, 28))
