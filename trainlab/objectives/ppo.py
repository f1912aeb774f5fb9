"""PPO for language models (RLHF: Ziegler et al. 2019, Stiennon et al. 2020, Ouyang et al. 2022).

The policy carries a value head (model.value_head = true). The prompts source generates, scores and calls
`prepare`, which shapes the rewards and estimates advantages, without gradients:

    per-token reward  r_t = -kl_coef * KL_t  (+ the reply's score on its last token)
                      KL_t = old_logp - ref_logp (k1) or exp(ref - old) - (ref - old) - 1 (k3)
    GAE               delta_t = r_t + gamma V_{t+1} - V_t ;  A_t = delta_t + gamma lambda A_{t+1}
                      (Schulman et al. 2016); returns R_t = A_t + V_t; advantages whitened over the round

then the loss on each batch of the round (data.epochs_per_round passes):

    policy  -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)          mean over reply tokens
    value   0.5 max((V - R)^2, (clip(V, V_old +- cliprange_value) - R)^2), weighted by vf_coef

Logged: pg_loss, value_loss, clip_frac, approx_kl (mean of (ratio - 1) - log ratio), entropy; the source logs
reward, kl and the rest of the round's statistics.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.objectives import token_logps
from trainlab.objectives.grpo import clipped_surrogate, entropy, scaled, token_mean


class PPOConfig(ObjectiveTable):
    kind: Literal["ppo"] = "ppo"
    kl_coef: float = Field(0.05, ge=0)  # per-token KL penalty in the reward
    kl_estimator: Literal["k1", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)  # GAE's lambda
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_advantages: bool = True


@registry.objective("ppo", PPOConfig, needs={"token_logits", "values"}, data_needs={"prompts"})
def build(cfg: PPOConfig, info: dict):
    """PPO with a value head, a per-token KL penalty to the reference and GAE (RLHF)."""
    return PPO(cfg)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns over the masked positions of each row (B, T); positions outside are 0."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(len(rewards))
    next_value = torch.zeros(len(rewards))
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t].float()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m + last * (1 - m)  # positions outside the reply pass through
        adv[:, t] = last * m
        next_value = values[:, t] * m + next_value * (1 - m)
    return adv, (adv + values) * mask


class PPO:
    uses_reference = True
    needs_values = True

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg

    def prepare(self, rollout: dict) -> dict:
        c = self.cfg
        mask = rollout["targets"] != -100
        d = rollout["ref_logp"] - rollout["old_logp"]
        kl = -d if c.kl_estimator == "k1" else torch.exp(d) - d - 1
        rewards = -c.kl_coef * kl * mask
        last = mask.float().cumsum(1).argmax(1)  # each reply's last token
        rewards[torch.arange(len(rewards)), last] += rollout["reward"]
        adv, returns = gae(rewards, rollout["values"], mask, c.gamma, c.lam)
        if c.whiten_advantages:
            m = adv[mask]
            adv = (adv - m.mean()) / (m.std() + 1e-8) * mask
        return {"advantages": adv, "returns": returns}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        targets = batch["targets"]
        mask = targets != -100
        per_step = token_mean(batch, mask)
        h = model.hidden(batch["idx"])
        logits = scaled(model.head(h), batch)
        logp = token_logps(logits, targets)
        per_token, clip_frac = clipped_surrogate(logp, batch["old_logp"], batch["advantages"].float(), mask,
                                                 c.cliprange, c.cliprange)
        pg = per_step(per_token)
        v, old_v, ret = model.values(h).float(), batch["values"], batch["returns"]
        v_clipped = old_v + (v - old_v).clamp(-c.cliprange_value, c.cliprange_value)
        vf = 0.5 * per_step(torch.max((v - ret) ** 2, (v_clipped - ret) ** 2))
        with torch.no_grad():
            log_ratio = (logp - batch["old_logp"]) * mask
            approx_kl = per_step(torch.exp(log_ratio) - 1 - log_ratio)
        return pg + c.vf_coef * vf, {"pg_loss": pg.detach(), "value_loss": vf.detach(), "clip_frac": clip_frac.detach(),
                                     "approx_kl": approx_kl, "entropy": entropy(logits, mask)}
