"""A multi-layer perceptron: (Linear -> norm -> activation -> dropout) x L, then a linear head."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: list[int], dropout: float = 0.0,
                 norm: str = "batch", activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # images (B, C, H, W) become (B, C*H*W)
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append({"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(norm, lambda _: nn.Identity())(h))
            layers.append(nn.ReLU() if activation == "relu" else nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)
        self.reset_parameters(activation)

    def reset_parameters(self, activation: str = "relu") -> None:
        # He initialization keeps activation variance constant through ReLU layers (He et al., 2015).
        for m in self.body.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # A small head: initial predictions near uniform (classification) or near the mean (regression).
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.head.in_features) * 0.1)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
