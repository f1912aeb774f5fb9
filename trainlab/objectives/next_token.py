"""Self-supervised learning: predict every next token of unlabelled text; the text is its own label."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable


class NextTokenConfig(ObjectiveTable):
    kind: Literal["next_token"] = "next_token"
    moe_aux_weight: float = Field(0.01, ge=0)  # weight of the MoE load-balancing loss


@registry.objective("next_token", NextTokenConfig, needs={"token_logits"}, data_needs={"tokens"}, refuses={"labels"})
def build(cfg: NextTokenConfig, info: dict):
    """Cross-entropy of every next token (self-supervised), plus MoE load balancing."""
    return NextToken(cfg.moe_aux_weight)


class NextToken:
    """Cross-entropy of the next token at every position, plus the MoE load-balancing loss when there is one."""

    def __init__(self, moe_aux_weight: float = 0.01):
        self.moe_aux_weight = moe_aux_weight

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch["idx"])  # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten())
        metrics: dict = {"ce": ce.detach()}
        loss = ce
        moe = model.moe_layers() if hasattr(model, "moe_layers") else []
        if moe:
            aux = model.aux_loss()
            loss = ce + self.moe_aux_weight * aux
            load = torch.stack([m.load for m in moe])  # (layers, experts): fraction of routing slots
            metrics.update(moe_aux=aux.detach(), moe_max_load=load.max(1).values.mean(),
                           moe_load_entropy=-(load * load.clamp_min(1e-9).log()).sum(1).mean() / math.log(load.shape[1]))
        return loss, metrics
