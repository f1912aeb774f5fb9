"""DQN on transitions sampled from a replay buffer (Mnih et al., 2015), optionally Double DQN (van Hasselt et al.,
2016). The source (trainlab.rl.replay) acts, stores, samples and evaluates the target network without
gradients; a batch arrives with `next_q`, the value of each transition's next observation:

    next_q = max_a Q_target(s', a)                          (double = false)
    next_q = Q_target(s', argmax_a Q_online(s'))            (double = true: the online net picks, the target rates)

and the objective regresses Q_online(s, a) on the TD target

    y = r + gamma (1 - terminated) next_q

A truncated transition (a time limit) bootstraps from its final observation; a terminated one has no future.
The loss is the Huber loss (smooth L1, beta 1, as Stable-Baselines3) or the squared error.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trainlab import registry
from trainlab.config import ObjectiveTable


class DQNTable(ObjectiveTable):
    kind: Literal["dqn"] = "dqn"
    gamma: float = Field(0.99, ge=0, le=1)  # discount
    huber: bool = True  # the Huber loss (smooth L1); false: the mean squared error
    double: bool = False  # Double DQN: the online network chooses the next action, the target network rates it


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma (1 - terminated) next_q: the one-step TD target (a terminated transition has no future)."""
    return rewards.float() + gamma * (1.0 - terminated.float()) * next_q.float()


class DQN:
    def __init__(self, cfg: DQNTable):
        self.cfg = cfg
        self.double = cfg.double  # read by the source: how it computes `next_q`

    def loss(self, model, batch):
        q = model(batch["obs"]).float().gather(1, batch["actions"].long()[:, None])[:, 0]
        y = td_target(batch["rewards"], batch["terminated"], batch["next_q"], self.cfg.gamma)
        loss = F.smooth_l1_loss(q, y) if self.cfg.huber else F.mse_loss(q, y)
        with torch.no_grad():
            td = (q - y).abs().mean()
        return loss, {"q_mean": q.detach().mean(), "td_error": td}


@registry.objective("dqn", DQNTable, needs={"q_values"}, data_needs={"transitions"})
def build(cfg: DQNTable, info: dict) -> DQN:
    """DQN's TD regression on replayed transitions (Double DQN with double = true)."""
    return DQN(cfg)
