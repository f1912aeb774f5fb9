"""The AlphaZero network and its objective.

Model `alphazero`: a small residual CNN over the encoded board (games.encode: own stones, opponent's, ones):
a 3x3 convolution stem, `blocks` residual blocks of two 3x3 convolutions (`channels` wide, batch norm), then

  policy head: 1x1 convolution to 2 planes, a linear layer -> logits over the game's actions
  value head:  1x1 convolution to 1 plane, a hidden linear layer, a linear layer -> tanh: the expected outcome
               for the player to move, in [-1, 1]

`forward(x)` returns (logits (B, A), value (B,)). Only the objective below and the self-play source read it.

Objective `alphazero`: cross-entropy of the policy against the search's visit distribution plus the squared
error of the value against the game's outcome (from the position's mover's view):

    loss = policy_weight * -sum(pi * log_softmax(logits)) + value_weight * (z - v)^2

Weight decay (AlphaZero's L2 term) is the optimizer's (optim.weight_decay).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable, ObjectiveTable


class AlphaZeroConfig(NetworkTable):
    kind: Literal["alphazero"] = "alphazero"
    channels: PositiveInt = 64  # width of the convolutional trunk
    blocks: int = Field(2, ge=0)  # residual blocks after the stem
    value_hidden: PositiveInt = 64  # the value head's hidden width


class AlphaZeroObjective(ObjectiveTable):
    kind: Literal["alphazero"] = "alphazero"
    policy_weight: float = Field(1.0, ge=0)  # weight of the policy cross-entropy
    value_weight: float = Field(1.0, ge=0)  # weight of the value's squared error


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class AlphaZeroNet(nn.Module):
    def __init__(self, cfg: AlphaZeroConfig, input_shape: tuple[int, int, int], num_actions: int):
        super().__init__()
        c_in, h, w = input_shape
        c = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(c) for _ in range(cfg.blocks)])
        self.policy_conv = nn.Sequential(nn.Conv2d(c, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
        self.policy = nn.Linear(2 * h * w, num_actions)
        self.value_conv = nn.Sequential(nn.Conv2d(c, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU())
        self.value = nn.Sequential(nn.Linear(h * w, cfg.value_hidden), nn.ReLU(), nn.Linear(cfg.value_hidden, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.blocks(self.stem(x))
        logits = self.policy(self.policy_conv(x).flatten(1))
        value = torch.tanh(self.value(self.value_conv(x).flatten(1)))[:, 0]
        return logits, value


@registry.model("alphazero", AlphaZeroConfig, consumes={"boards"}, produces={"policy_value"}, objective="alphazero")
def build(cfg: AlphaZeroConfig, info: dict) -> nn.Module:
    """A residual CNN with a policy head and a value head, for board games (data.source = "selfplay")."""
    return AlphaZeroNet(cfg, tuple(info["input_shape"]), int(info["num_actions"]))


class Loss:
    def __init__(self, cfg: AlphaZeroObjective):
        self.cfg = cfg

    def loss(self, model, batch):
        logits, value = model(batch["x"])
        policy_loss = -(batch["pi"] * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        value_loss = F.mse_loss(value.float(), batch["z"])
        loss = self.cfg.policy_weight * policy_loss + self.cfg.value_weight * value_loss
        return loss, {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach()}


@registry.objective("alphazero", AlphaZeroObjective, needs={"policy_value"}, data_needs={"boards"})
def build_objective(cfg: AlphaZeroObjective, info: dict) -> Loss:
    """Cross-entropy to the search's visit distribution plus the value's squared error to the game's outcome."""
    return Loss(cfg)
