"""Supervised learning: labelled pairs (x, y); minimize the prediction error.

An objective is one method, `loss(model, batch) -> (loss, metrics)`; the loop does the rest.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.errors import UserError


class SupervisedConfig(ObjectiveTable):
    kind: Literal["supervised"] = "supervised"
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # classification only


@registry.objective("supervised", SupervisedConfig, needs={"predictions"}, data_needs={"labels"})
def build(cfg: SupervisedConfig, info: dict):
    """Cross-entropy for classes, mean squared error for numbers: the data's task decides."""
    if info.get("anomaly_class", -1) >= 0:
        raise UserError("data.anomaly_class is for unsupervised models: a classifier never trained on that class "
                        "cannot name it", "use model.kind = 'autoencoder', 'vae' or 'kmeans'")
    if info["task"] == "classification":
        return Classification(cfg.label_smoothing, info.get("replay_fraction", 0.0))
    if cfg.label_smoothing:
        raise UserError(f"objective.label_smoothing = {cfg.label_smoothing} is for classification; this data is "
                        f"'{info['task']}'", "remove objective.label_smoothing")
    return Regression()


class Classification:
    """Cross-entropy on class indices, with optional label smoothing (Szegedy et al., 2016). With replayed
    pre-training windows in the batch (trainlab.data.replay), (1 - f) * this + f * their next-token loss."""

    def __init__(self, label_smoothing: float = 0.0, replay_fraction: float = 0.0):
        self.label_smoothing, self.replay_fraction = label_smoothing, replay_fraction

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch["x"])  # (B, K)
        loss = F.cross_entropy(logits.float(), batch["y"], label_smoothing=self.label_smoothing)
        metrics = {"accuracy": (logits.argmax(-1) == batch["y"]).float().mean().detach()}
        if "replay_idx" in batch:
            lm = model.lm_logits(batch["replay_idx"])
            replay = F.cross_entropy(lm.float().flatten(0, 1), batch["replay_targets"].flatten())
            metrics.update(task_loss=loss.detach(), replay_ce=replay.detach())
            loss = (1 - self.replay_fraction) * loss + self.replay_fraction * replay
        return loss, metrics


class Regression:
    """Mean squared error on (standardized) targets; the mean absolute error is logged beside it."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        pred = model(batch["x"]).float().squeeze(-1)  # (B,)
        loss = F.mse_loss(pred, batch["y"])
        return loss, {"mae": (pred - batch["y"]).abs().mean().detach()}
