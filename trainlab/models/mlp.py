"""A multi-layer perceptron: (Linear -> norm -> activation -> dropout) x L, then a linear head."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from trainlab import registry
from trainlab.errors import UserError
from trainlab.config import NetworkTable


class MLPConfig(NetworkTable):
    kind: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = [128]  # hidden widths
    dropout: float = Field(0.0, ge=0, lt=1)
    norm: Literal["batch", "layer", "none"] = "batch"  # after each hidden Linear
    activation: Literal["relu", "gelu"] = "relu"


@registry.model("mlp", MLPConfig, consumes={"features"}, produces={"predictions"}, objective="supervised")
def build(cfg: MLPConfig, info: dict) -> nn.Module:
    """Multi-layer perceptron on any array input (flattened): class logits or a regression value."""
    return MLP(math.prod(info["input_shape"]), output_size(info), cfg.hidden, cfg.dropout, cfg.norm, cfg.activation)


def output_size(info: dict) -> int:
    """Class logits for classification, one value for regression (and for unlabeled data: nothing to predict)."""
    if info["task"] != "classification":
        return 1
    if info["num_classes"] < 2:
        names = info.get("class_names") or []
        raise UserError(f"a classifier needs at least two classes; the data has {info['num_classes']}"
                        + (f" ({names[0]!r})" if names else ""),
                        "add the other classes (one sub-folder or label each), or train an unsupervised model "
                        "(e.g. model.kind = 'autoencoder') on data of one class")
    return info["num_classes"]


class MLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: list[int], dropout: float = 0.0,
                 norm: str = "batch", activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # images (B, C, H, W) become (B, C*H*W)
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            # "none" keeps an Identity in its place, so parameter names do not depend on the norm.
            layers.append({"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": lambda _: nn.Identity()}[norm](h))
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
