"""Supervised learning: labelled pairs (x, y); minimize the prediction error.

An objective is one method, `loss(model, batch) -> (loss, metrics)`; the loop does the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classification:
    """Cross-entropy on class indices, with optional label smoothing (Szegedy et al., 2016)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch["x"])  # (B, K)
        loss = F.cross_entropy(logits.float(), batch["y"], label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(-1) == batch["y"]).float().mean()
        return loss, {"accuracy": accuracy.detach()}


class Regression:
    """Mean squared error on (standardized) targets; the mean absolute error is logged beside it."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        pred = model(batch["x"]).float().squeeze(-1)  # (B,)
        loss = F.mse_loss(pred, batch["y"])
        return loss, {"mae": (pred - batch["y"]).abs().mean().detach()}
