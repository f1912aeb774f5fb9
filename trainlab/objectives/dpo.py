"""Direct preference optimization: the policy learns from preference pairs without a reward model.

With h = [log pi(y_c|x) - log ref(y_c|x)] - [log pi(y_r|x) - log ref(y_r|x)] (summed over the reply's tokens):

    sigmoid (Rafailov et al. 2023, eq. 7)    loss = -log sigmoid(beta * h)
    ipo     (Azar et al. 2023, eq. 17)       loss = (h' - 1 / (2 beta))^2, h' on per-token mean log-probs (as TRL)
    + rpo_alpha * (the chosen reply's per-token NLL)   optional (RPO; TRL's rpo_alpha)

The reference is frozen and lives in the source (trainlab.data.reference): every batch carries ref_chosen and
ref_rejected. When the policy is the reference, h = 0 and the sigmoid loss is ln 2. Logged (TRL's names with
underscores): rewards_chosen = beta * (log pi - log ref) of the chosen reply, rewards_rejected, margins, and
accuracies (the chosen reply's implicit reward above the rejected one's).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.objectives import token_logps


class DPOConfig(ObjectiveTable):
    kind: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0)  # strength of the pull towards the reference (the implicit KL weight)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # sigmoid: the chance a label is flipped (cDPO)
    # weight of the chosen reply's per-token negative log-likelihood added to the loss (RPO, Pang et al. 2024;
    # TRL's rpo_alpha): keeps the chosen replies likely while the margin grows (0 = plain DPO)
    rpo_alpha: float = Field(0.0, ge=0)


@registry.objective("dpo", DPOConfig, needs={"token_logits"}, data_needs={"preferences"})
def build(cfg: DPOConfig, info: dict):
    """Direct preference optimization (sigmoid or IPO loss) against a frozen reference."""
    return DPO(cfg)


def reply_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
    """(sum log pi of chosen, of rejected, chosen token counts, rejected token counts): one forward for both."""
    b = len(batch["chosen_idx"])
    width = max(batch["chosen_idx"].shape[1], batch["rejected_idx"].shape[1])
    pad = getattr(model, "pad_id", None) or 0

    def widen(x, value):
        return F.pad(x, (0, width - x.shape[1]), value=value)

    idx = torch.cat([widen(batch["chosen_idx"], pad), widen(batch["rejected_idx"], pad)])
    targets = torch.cat([widen(batch["chosen_targets"], -100), widen(batch["rejected_targets"], -100)])
    logp = token_logps(model(idx), targets).sum(1)
    n = (targets != -100).sum(1)
    return logp[:b], logp[b:], n[:b], n[b:]


class DPO:
    uses_reference = True  # the source adds ref_chosen / ref_rejected to every batch

    def __init__(self, cfg: DPOConfig):
        self.cfg = cfg

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        pc, pr, nc, nr = reply_logps(model, batch)
        rc, rr = batch["ref_chosen"].float(), batch["ref_rejected"].float()
        if c.loss_type == "ipo":
            h = (pc - rc) / nc - (pr - rr) / nr
            loss = ((h - 1 / (2 * c.beta)) ** 2).mean()
        else:
            h = (pc - rc) - (pr - rr)
            loss = (-(1 - c.label_smoothing) * F.logsigmoid(c.beta * h)
                    - c.label_smoothing * F.logsigmoid(-c.beta * h)).mean()
        chosen, rejected = c.beta * (pc - rc).detach(), c.beta * (pr - rr).detach()
        metrics = {}
        if c.rpo_alpha:
            nll = -(pc / nc).mean()
            loss = loss + c.rpo_alpha * nll
            metrics["nll_chosen"] = nll.detach()
        return loss, {**metrics, "rewards_chosen": chosen.mean(), "rewards_rejected": rejected.mean(),
                      "margins": (chosen - rejected).mean(), "accuracies": (chosen > rejected).float().mean()}
