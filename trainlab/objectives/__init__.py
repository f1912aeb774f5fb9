"""Objectives: one file per paradigm. Each turns a batch into (scalar loss, metrics dict)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from trainlab.config import ObjectiveConfig
from trainlab.errors import UserError


class Objective(Protocol):
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]: ...


def build(cfg: ObjectiveConfig, info: dict) -> Objective:
    from trainlab.objectives.supervised import Classification, Regression

    kind = info["task"] if cfg.kind == "auto" else cfg.kind
    if kind != info["task"]:
        raise UserError(f"objective.kind = '{cfg.kind}' does not fit data with task '{info['task']}'",
                        f"set objective.kind = 'auto' or data.task = '{cfg.kind}'")
    if kind == "classification":
        return Classification(cfg.label_smoothing)
    return Regression()
