"""PPO on an environment's rollouts (Schulman et al., 2017): the clipped surrogate, a value loss and an entropy
bonus, over minibatches of a rollout that the source (trainlab.rl.rollouts) collected with the policy's weights
at that time. `prepare` (called by the source, without gradients) turns a rollout's rewards and values into
advantages and returns with GAE.

    ratio = exp(log pi(a|s) - log pi_old(a|s))
    policy loss  = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)))   (A normalized per minibatch: the
                   source does it over the whole minibatch before splitting it into micro-batches)
    value loss   = mean((R - V(s))^2)            (V clipped around the old value with clip_range_vf > 0)
    loss = policy loss + vf_coef value loss - ent_coef entropy

The value loss is the plain mean squared error as in Stable-Baselines3 (CleanRL halves it), so that a recipe
written for one means the same here.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.rl.agents import log_prob_entropy


class RLPPOTable(ObjectiveTable):
    kind: Literal["rl_ppo"] = "rl_ppo"
    gamma: float = Field(0.99, ge=0, le=1)  # discount
    gae_lambda: float = Field(0.95, ge=0, le=1)  # GAE's lambda: 0 = one-step TD, 1 = Monte-Carlo returns
    clip_range: float = Field(0.2, gt=0)  # the policy ratio's clip
    clip_range_vf: float = Field(0.0, ge=0)  # clip the value around the rollout's value (0 = no clipping)
    vf_coef: float = Field(0.5, ge=0)
    ent_coef: float = Field(0.0, ge=0)
    normalize_advantage: bool = True  # per minibatch (this process's share of it under torchrun)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        truncated: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of (T, N) rollouts.

    `next_values[t]` is the value of the state after step t *in the same episode*: the next step's value, or,
    when step t ended the episode by a time limit (truncated), the value of its final observation; a terminated
    episode has no next state (its next value is ignored). A done step also stops the sum of later deltas, which
    belong to the next episode:

        delta_t = r_t + gamma (1 - terminated_t) next_value_t - V_t
        A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
    """
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(len(rewards))):
        term = terminated[t].float()
        done = torch.maximum(term, truncated[t].float())
        delta = rewards[t] + gamma * (1 - term) * next_values[t] - values[t]
        last = delta + gamma * lam * (1 - done) * last
        adv[t] = last
    return adv, adv + values


class RLPPO:
    def __init__(self, cfg: RLPPOTable, discrete: bool):
        self.cfg, self.discrete = cfg, discrete

    def prepare(self, rollout: dict) -> dict:
        adv, ret = gae(rollout["rewards"], rollout["values"], rollout["next_values"], rollout["terminated"],
                       rollout["truncated"], self.cfg.gamma, self.cfg.gae_lambda)
        return {**rollout, "advantages": adv, "returns": ret}

    def loss(self, model, batch):
        c = self.cfg
        params, value = model(batch["obs"])
        logp, ent = log_prob_entropy(params, batch["actions"], self.discrete)
        ent = ent.mean()
        log_ratio = logp - batch["logp"]
        ratio = log_ratio.exp()
        adv = batch["advantages"]  # normalized over the minibatch by the source when normalize_advantage is on
        policy_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - c.clip_range, 1 + c.clip_range)).mean()
        value = value.float()
        if c.clip_range_vf:
            value = batch["values"] + (value - batch["values"]).clamp(-c.clip_range_vf, c.clip_range_vf)
        value_loss = (batch["returns"] - value).pow(2).mean()
        loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * ent
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's low-variance estimator of KL(old || new)
            clip_fraction = ((ratio - 1).abs() > c.clip_range).float().mean()
        return loss, {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "entropy": ent.detach(),
                      "approx_kl": approx_kl, "clip_fraction": clip_fraction}


@registry.objective("rl_ppo", RLPPOTable, needs={"policy", "values"}, data_needs={"rollouts"})
def build(cfg: RLPPOTable, info: dict) -> RLPPO:
    """PPO's clipped objective on environment rollouts, with GAE advantages."""
    return RLPPO(cfg, info["action"]["kind"] == "discrete")
