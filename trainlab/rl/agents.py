"""The agents' networks: an actor-critic for PPO (discrete or continuous actions) and a Q-network for DQN.

Both read raw observations: observation normalization, when asked for, is a layer of the model (`ObsNorm`,
running statistics kept as buffers), so the statistics are saved with the weights and every reader of the
model (`trainlab eval`, `trainlab.load`, a resumed run) applies exactly what training applied. The source
updates them between rollouts (`update`), never inside a gradient step.

Action distributions are read from one tensor, `params`: a discrete policy's logits, or a Gaussian policy's
mean and log standard deviation side by side (the log std is a state-independent parameter, as in PPO's
paper). The helpers below sample with a given generator (so rollouts are reproducible and resumable) and
give log-probabilities and entropies for either kind.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, PositiveInt
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable
from trainlab.errors import UserError


def combine_moments(mean, var, count, b_mean, b_var, b):
    """Mean, variance and count of everything seen, given theirs so far and a new batch's (Chan et al.'s
    parallel update): floats or tensors alike."""
    delta, total = b_mean - mean, count + b
    return mean + delta * b / total, (var * count + b_var * b + delta * delta * count * b / total) / total, total


class ObsNorm(nn.Module):
    """(x - mean) / std, clipped, with a running mean and variance over every observation seen (Chan et al.'s
    parallel update, as Stable-Baselines3's VecNormalize). Identity when disabled."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float):
        super().__init__()
        self.enabled, self.clip = enabled, clip
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add observations. Under torchrun every process calls this with its own and all apply the same update
        (the batch statistics are summed over processes), so the statistics stay equal everywhere."""
        if not self.enabled:
            return
        x = x.to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        sums = torch.cat([torch.tensor([float(len(x))], dtype=torch.float64, device=x.device), x.sum(0).flatten(),
                          x.pow(2).sum(0).flatten()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        b = float(sums[0])
        if b == 0:
            return
        k = self.mean.numel()
        b_mean = (sums[1:1 + k] / b).reshape(self.mean.shape)
        b_var = ((sums[1 + k:] / b).reshape(self.mean.shape) - b_mean.pow(2)).clamp_min(0)
        mean, var, count = combine_moments(self.mean, self.var, self.count, b_mean, b_var, b)
        self.mean.copy_(mean), self.var.copy_(var), self.count.copy_(count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        z = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + 1e-8)
        return z.clamp(-self.clip, self.clip)


def mlp(sizes: list[int], activation: str, out: int, out_gain: float, ortho: bool) -> nn.Sequential:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [_init(nn.Linear(a, b), math.sqrt(2), ortho), act()]
    layers.append(_init(nn.Linear(sizes[-1], out), out_gain, ortho))
    return nn.Sequential(*layers)


def _init(layer: nn.Linear, gain: float, ortho: bool) -> nn.Linear:
    if ortho:  # orthogonal weights and zero biases: the initialization PPO implementations share
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


class AgentTable(NetworkTable):
    hidden: list[PositiveInt] = [64, 64]  # hidden widths
    activation: Literal["tanh", "relu"] = "tanh"
    normalize_obs: bool = False  # a running observation normalization layer (its statistics are buffers)
    clip_obs: float = Field(10.0, gt=0)  # normalized observations are clipped to +-clip_obs
    ortho_init: bool = True  # orthogonal initialization (gain sqrt 2, policy head 0.01, value head 1)


class ActorCriticTable(AgentTable):
    kind: Literal["actor_critic"] = "actor_critic"
    action: Literal["auto", "discrete", "continuous"] = "auto"  # what the recipe is written for (auto: the env's)
    shared: bool = False  # one trunk for the policy and the value (false: two networks, as SB3's MlpPolicy)
    log_std_init: float = 0.0  # continuous actions: the initial log standard deviation


class QNetworkTable(AgentTable):
    kind: Literal["q_network"] = "q_network"
    activation: Literal["tanh", "relu"] = "relu"
    hidden: list[PositiveInt] = [64, 64]
    dueling: bool = False  # a value stream and an advantage stream (Wang et al., 2016)


def _action_info(info: dict) -> dict:
    if "action" not in info:
        raise UserError("an agent model needs an environment source (data.source = 'gym' or 'gym_replay'); this "
                        "data has no action space", "pair model.kind actor_critic / q_network with a gym source")
    return info["action"]


class ActorCritic(nn.Module):
    def __init__(self, cfg: ActorCriticTable, obs_shape: tuple[int, ...], action: dict):
        super().__init__()
        self.action = action
        self.discrete = action["kind"] == "discrete"
        n_in = int(np.prod(obs_shape))
        n_out = action["n"] if self.discrete else action["dim"]
        self.obs_norm = ObsNorm(tuple(obs_shape), cfg.normalize_obs, cfg.clip_obs)
        if cfg.shared:
            self.trunk = mlp([n_in, *cfg.hidden[:-1]], cfg.activation, cfg.hidden[-1], math.sqrt(2), cfg.ortho_init)
            self.trunk.append({"tanh": nn.Tanh, "relu": nn.ReLU}[cfg.activation]())
            self.pi = _init(nn.Linear(cfg.hidden[-1], n_out), 0.01, cfg.ortho_init)
            self.vf = _init(nn.Linear(cfg.hidden[-1], 1), 1.0, cfg.ortho_init)
        else:
            self.trunk = None
            self.pi = mlp([n_in, *cfg.hidden], cfg.activation, n_out, 0.01, cfg.ortho_init)
            self.vf = mlp([n_in, *cfg.hidden], cfg.activation, 1, 1.0, cfg.ortho_init)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((n_out,), float(cfg.log_std_init)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(params, value): logits, or mean and log std side by side; the state value."""
        x = self.obs_norm(obs.float()).flatten(1)
        h = self.trunk(x) if self.trunk is not None else x
        out, value = self.pi(h), self.vf(h)[:, 0]
        if not self.discrete:
            out = torch.cat([out, self.log_std.expand_as(out)], -1)
        return out, value


class QNetwork(nn.Module):
    def __init__(self, cfg: QNetworkTable, obs_shape: tuple[int, ...], n_actions: int):
        super().__init__()
        n_in = int(np.prod(obs_shape))
        self.obs_norm = ObsNorm(tuple(obs_shape), cfg.normalize_obs, cfg.clip_obs)
        self.dueling = cfg.dueling
        if cfg.dueling:
            act = {"tanh": nn.Tanh, "relu": nn.ReLU}[cfg.activation]
            self.trunk = nn.Sequential(*mlp([n_in, *cfg.hidden[:-1]], cfg.activation, cfg.hidden[-1], math.sqrt(2),
                                            cfg.ortho_init), act())
            self.value = _init(nn.Linear(cfg.hidden[-1], 1), 1.0, cfg.ortho_init)
            self.advantage = _init(nn.Linear(cfg.hidden[-1], n_actions), 1.0, cfg.ortho_init)
        else:
            self.q = mlp([n_in, *cfg.hidden], cfg.activation, n_actions, 1.0, cfg.ortho_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, actions) action values."""
        x = self.obs_norm(obs.float()).flatten(1)
        if not self.dueling:
            return self.q(x)
        h = self.trunk(x)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(-1, keepdim=True)


@registry.model("actor_critic", ActorCriticTable, consumes={"observations"}, produces={"policy", "values"},
                objective="rl_ppo")
def build_actor_critic(cfg: ActorCriticTable, info: dict) -> ActorCritic:
    """A policy and a value network (MLPs) over an environment's observations: discrete or Gaussian actions."""
    action = _action_info(info)
    if cfg.action != "auto" and cfg.action != action["kind"]:
        space = f"Discrete({action['n']})" if action["kind"] == "discrete" else f"Box({action['dim']})"
        raise UserError(f"model.action = '{cfg.action}' (the recipe is written for {cfg.action} actions); "
                        f"{info.get('env', 'the environment')} has {action['kind']} actions ({space})",
                        f"use a recipe for {action['kind']} actions, or set model.action = 'auto'")
    return ActorCritic(cfg, tuple(info["input_shape"]), action)


@registry.model("q_network", QNetworkTable, consumes={"observations"}, produces={"q_values"}, objective="dqn")
def build_q_network(cfg: QNetworkTable, info: dict) -> QNetwork:
    """Action values Q(s, .) of a discrete action space (an MLP, optionally dueling)."""
    action = _action_info(info)
    if action["kind"] != "discrete":
        raise UserError(f"DQN chooses among discrete actions; {info.get('env', 'the environment')} has continuous "
                        f"actions (Box({action['dim']}))", "train it with PPO (model.kind = 'actor_critic', e.g. the "
                        "pendulum-ppo recipe), or discretize its actions")
    return QNetwork(cfg, tuple(info["input_shape"]), action["n"])


# ---------------------------------------------------------------------- distributions from `params`


def sample(params: torch.Tensor, discrete: bool, generator: torch.Generator | None) -> torch.Tensor:
    if discrete:
        probs = torch.softmax(params.float(), -1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    mean, log_std = params.float().chunk(2, -1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device)
    return mean + noise * log_std.exp()


def greedy(params: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The deterministic action: the most likely one, or the Gaussian's mean."""
    return params.argmax(-1) if discrete else params.float().chunk(2, -1)[0]


def log_prob(params: torch.Tensor, actions: torch.Tensor, discrete: bool) -> torch.Tensor:
    if discrete:
        return torch.log_softmax(params.float(), -1).gather(-1, actions.long()[:, None])[:, 0]
    mean, log_std = params.float().chunk(2, -1)
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_prob_entropy(params: torch.Tensor, actions: torch.Tensor, discrete: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both at once (one log-softmax for a discrete policy): what PPO's loss needs every step."""
    if not discrete:
        return log_prob(params, actions, False), entropy(params, False)
    logp = torch.log_softmax(params.float(), -1)
    return logp.gather(-1, actions.long()[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def entropy(params: torch.Tensor, discrete: bool) -> torch.Tensor:
    if discrete:
        logp = torch.log_softmax(params.float(), -1)
        return -(logp.exp() * logp).sum(-1)
    _, log_std = params.float().chunk(2, -1)
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
