"""Objectives: one file per paradigm. Each turns a batch into (scalar loss, metrics dict)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn



class Objective(Protocol):
    """The one required method. Metrics may be floats or 0-dim tensors (kept on the device: the loop reads them
    only when it logs). An objective may also define the optional hook

        before_step(step: int) -> None     called by the loop before each optimizer step's forward passes

    for schedules of its own (a VAE's KL warm-up). The step is part of the checkpoint, so they resume exactly.
    Frozen models and anything computed without gradients belong in the data source, not here."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]: ...


class LossModule(nn.Module):
    """A model and its objective as one module whose forward is the loss: what DDP and FSDP wrap, so that every
    call the objective makes on the model (model(x), model.encode(x), ...) happens inside one wrapped forward."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor] | None, run=None):
        """The objective's loss on `batch`; or `run(model, batch)`: other calls on the model that must go
        through the wrapper's forward (generation under FSDP, see trainlab.policy)."""
        if run is not None:
            return run(self.model, batch)
        return self.objective.loss(self.model, batch)


def build(cfg, info: dict, model_kind: str) -> Objective:
    """The objective of the recipe's [objective] table, checked against what the data holds."""
    from trainlab import registry

    registry.check_data(model_kind, cfg.kind, info)
    return registry.get("objective", cfg.kind).build(cfg, info)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: logits (B, T, V), targets (B, T) with -100 where nothing is scored
    -> (B, T) float32, 0 at those positions. The log-softmax runs in float32 (bf16 logits lose the tails)."""
    keep = targets != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp * keep
