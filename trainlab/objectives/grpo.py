"""Group relative policy optimization (Shao et al. 2024, DeepSeekMath): PPO's clipped objective without a
critic; a reply's advantage is its reward relative to the other replies to the same prompt.

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)       (scale_rewards = "group"; "none": no division)
    ratio_t = pi(y_t) / pi_old(y_t)
    loss = - sum_t min(ratio_t A, clip(ratio_t, 1 - eps_low, 1 + eps_high) A) / (reply tokens of the step)
           + beta * k3 KL to the reference

Token-level normalization (DAPO, Yu et al. 2025): every reply token of the optimizer step weighs the same
(across micro-batches and processes: the source's token_scale), so long replies are not down-weighted per
token. With data.temperature != 1 the log-probabilities are those of logits / temperature, the distribution
the replies were sampled from. beta defaults to 0 (no reference needed, as TRL now defaults); with beta > 0 the
per-token KL estimate k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman 2020) is added. The rollouts
(generation, rewards) come from the prompts source (trainlab.data.rollouts), which calls `prepare`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.objectives import token_logps


class GRPOConfig(ObjectiveTable):
    kind: Literal["grpo"] = "grpo"
    epsilon: float = Field(0.2, gt=0)  # clip range below 1 (and above, unless epsilon_high is set)
    epsilon_high: float = Field(0.0, ge=0)  # clip range above 1 (0 = epsilon; DAPO's clip-higher uses 0.28)
    beta: float = Field(0.0, ge=0)  # weight of the KL to the reference (0: no reference is loaded)
    scale_rewards: Literal["group", "none"] = "group"  # divide by the group's reward std (Dr. GRPO: "none")


@registry.objective("grpo", GRPOConfig, needs={"token_logits"}, data_needs={"prompts"})
def build(cfg: GRPOConfig, info: dict):
    """Group relative policy optimization: clipped ratio, group-relative advantages, token-level loss."""
    return GRPO(cfg)


def group_advantages(reward: torch.Tensor, group: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(N,) rewards of N / group prompts x group replies -> (N,) advantages relative to each group."""
    r = reward.view(-1, group)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True) + eps) if group > 1 else a
    return a.reshape(-1)


def clipped_surrogate(logp, old_logp, adv, mask, eps_low: float, eps_high: float):
    """Per-token PPO surrogate -min(ratio A, clip(ratio) A) (B, T), and the fraction of tokens clipped."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    was = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, (was & mask).sum() / mask.sum().clamp_min(1)


def scaled(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Logits of the distribution the replies were sampled from: / the rollout's temperature when it was not 1."""
    return logits / batch["temperature"][:, None, None] if "temperature" in batch else logits


def token_mean(batch: dict, mask: torch.Tensor):
    """x (B, T) -> its mean over the reply tokens of the whole optimizer step (the source's token_scale, which
    accounts for micro-batches and processes), or of this batch when it has none."""
    if "token_scale" in batch:
        return lambda x: (x * mask).sum() * batch["token_scale"][0]
    n = mask.sum().clamp_min(1)
    return lambda x: (x * mask).sum() / n


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the next-token distributions at the masked positions (no gradient)."""
    with torch.no_grad():
        p = torch.log_softmax(logits.float(), -1)
        h = -(p.exp() * p).sum(-1)
        return (h * mask).sum() / mask.sum().clamp_min(1)


class GRPO:
    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.uses_reference = cfg.beta > 0

    def prepare(self, rollout: dict) -> dict:
        """Advantages: each reply's reward relative to its group, on every one of its tokens."""
        group = int((rollout["group"] == 0).sum())
        adv = group_advantages(rollout["reward"], group, self.cfg.scale_rewards == "group")
        return {"advantages": adv}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        targets = batch["targets"]
        mask = targets != -100
        logits = scaled(model(batch["idx"]), batch)
        logp = token_logps(logits, targets)
        adv = batch["advantages"].float()[:, None]
        old = batch["old_logp"] if "old_logp" in batch else logp.detach()  # on-policy: the ratio is 1
        per_token, clip_frac = clipped_surrogate(logp, old, adv, mask, c.epsilon,
                                                 c.epsilon_high or c.epsilon)
        per_step = token_mean(batch, mask)
        loss = per_step(per_token)
        metrics = {"clip_frac": clip_frac.detach(), "entropy": entropy(logits, mask)}
        if c.beta:
            d = batch["ref_logp"] - logp
            kl = per_step(torch.exp(d) - d - 1)
            loss = loss + c.beta * kl
            metrics["kl_k3"] = kl.detach()
        return loss, metrics
