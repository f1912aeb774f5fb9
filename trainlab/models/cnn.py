"""A small residual CNN (He et al., 2016): stem, stages of residual blocks, global pooling, linear head."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable


class CNNConfig(NetworkTable):
    kind: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = [32, 64]  # width of each stage; every stage after the first halves the resolution
    blocks: PositiveInt = 1  # residual blocks per stage
    dropout: float = Field(0.0, ge=0, lt=1)  # before the head
    norm: Literal["batch", "layer", "none"] = "batch"  # layer: GroupNorm with one group


@registry.model("cnn", CNNConfig, consumes={"images"}, produces={"predictions"}, objective="supervised")
def build(cfg: CNNConfig, info: dict) -> nn.Module:
    """Residual CNN on images (C, H, W): class logits or a regression value."""
    from trainlab.models.mlp import output_size

    return CNN(info["input_shape"][0], output_size(info), cfg.channels, cfg.blocks, cfg.dropout, cfg.norm)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W), as one group
    assert kind == "none", kind
    return nn.Identity()


class ResidualBlock(nn.Module):
    """out = relu(x + F(x)), F = conv3x3 -> norm -> relu -> conv3x3 -> norm; a 1x1 projection when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(h)))


class CNN(nn.Module):
    def __init__(self, in_channels: int, out_features: int, channels: list[int], blocks: int = 1,
                 dropout: float = 0.0, norm: str = "batch"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False),
                                  _norm(norm, channels[0]), nn.ReLU())
        stages, c_prev = [], channels[0]
        for i, c in enumerate(channels):
            for b in range(blocks):
                # The first block of every stage after the first halves the resolution: 8x8 -> 4x4 -> 2x2.
                stages.append(ResidualBlock(c_prev, c, 2 if (i > 0 and b == 0) else 1, norm))
                c_prev = c
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_prev, out_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last norm of each residual branch: every block starts as the identity, which trains
        # deeper stacks more stably (Goyal et al., 2017, "Accurate, Large Minibatch SGD").
        for m in self.modules():
            if isinstance(m, ResidualBlock) and isinstance(m.norm2, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.zeros_(m.norm2.weight)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, C, H', W')
        h = h.mean(dim=(2, 3))  # global average pooling -> (B, C)
        return self.head(self.dropout(h))
