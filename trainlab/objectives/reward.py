"""A reward model from human (or rule-based) preferences: the Bradley-Terry loss on pairs.

    P(chosen preferred over rejected) = sigmoid(r(chosen) - r(rejected))
    loss = -log sigmoid(r_c - r_r) + center * (r_c + r_r)^2

(Ouyang et al. 2022, eq. 1; the optional centering term of Eisenstein et al. 2023 keeps the rewards near 0, as
TRL's center_rewards_coefficient does.) The model is a GPT with `head = "reward"`: one scalar per text, read at
its last real token. Logged: accuracy (the chosen reply scored higher) and the mean margin r_c - r_r.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable


class RewardConfig(ObjectiveTable):
    kind: Literal["reward"] = "reward"
    center: float = Field(0.0, ge=0)  # weight of (r_c + r_r)^2: rewards centred on 0 (0 = off)


@registry.objective("reward", RewardConfig, needs={"scores"}, data_needs={"preferences"})
def build(cfg: RewardConfig, info: dict):
    """Bradley-Terry loss on preference pairs (a reward model)."""
    return BradleyTerry(cfg.center)


class BradleyTerry:
    def __init__(self, center: float = 0.0):
        self.center = center

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        b = len(batch["chosen_idx"])
        # One forward for both replies: pad the shorter batch to the longer one's width.
        width = max(batch["chosen_idx"].shape[1], batch["rejected_idx"].shape[1])
        pad = model.pad_id if model.pad_id is not None else 0
        both = torch.cat([F.pad(batch[k], (0, width - batch[k].shape[1]), value=pad)
                          for k in ("chosen_idx", "rejected_idx")])
        scores = model(both).float()
        rc, rr = scores[:b], scores[b:]
        margin = rc - rr
        loss = -F.logsigmoid(margin).mean()
        if self.center:
            loss = loss + self.center * ((rc + rr) ** 2).mean()
        return loss, {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach(),
                      "reward_chosen": rc.mean().detach(), "reward_rejected": rr.mean().detach()}
