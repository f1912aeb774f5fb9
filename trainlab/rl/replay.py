"""Off-policy experience replay from Gymnasium environments: the data source of DQN (`data.source = "gym_replay"`).

The run alternates, as Stable-Baselines3's off-policy algorithms do, between

- a *round* of collection: each of the data.num_envs environments steps data.train_freq times (SB3's train_freq
  in "step" units: steps of every environment, so a round is num_envs x train_freq transitions), acting
  epsilon-greedily with the current weights, and storing every transition in a ring buffer of data.buffer_size
  (the oldest are overwritten). Until data.learning_starts transitions are collected the actions are uniformly
  random and no gradient step is taken (SB3's warm-up);
- data.gradient_steps optimizer steps, each on data.batch_size transitions drawn uniformly (with replacement)
  from the buffer, with `next_q` computed here by the target network (trainlab.rl.dqn has the TD target).

A stored transition is (obs, action, reward, next_obs, terminated), where next_obs is the *final* observation
of an episode that ended in that step (trainlab.rl.envs resets the environment itself, so the next episode's
first observation never poses as a successor): a truncated transition (time limit) bootstraps from it, a
terminated one does not.

The target network is a frozen copy of the model kept here (no gradients, eval mode). It is updated after every
data.target_update_interval *optimizer steps* (not environment steps, unlike SB3): with tau = 1 a hard copy,
else Polyak averaging target <- tau online + (1 - tau) target (buffers, e.g. observation statistics, are copied).
An SB3 interval of K environment steps is K x gradient_steps / (num_envs x train_freq) optimizer steps here;
when the interval is shorter than a collection round (RL-Zoo's CartPole: 10 environment steps against rounds of
256), SB3 syncs the target once per round before training, which is target_update_interval = gradient_steps.

Exploration: epsilon falls linearly from exploration_initial_eps to exploration_final_eps over the first
exploration_fraction x data.env_steps environment steps (SB3's schedule), then stays there.

The run's length: data.env_steps environment steps (rounded up to whole rounds) give loop.steps = the
optimizer steps of the rounds that end at or after learning_starts, x gradient_steps.

Exact resume: the buffer (its filled part), its position, the action and sampling generators, the target
network's weights, the round's remaining gradient steps, the environments (their episodes replayed) and the
episode statistics are the stream's state.

Logged after every step (the same keys every step): epsilon, episode_return and episode_length (the mean of
the last 100 finished episodes), episodes, env_steps, sps (environment steps per second of the run, collection
and training), buffer_size; the objective adds q_mean and td_error. Validation: data.eval_episodes greedy
episodes on seeds of their own (trainlab.rl.rollouts.EnvSource).

Under torchrun each process steps num_envs / world environments into a buffer of its own (buffer_size / world)
and samples its share of the batch; DDP averages the gradients, so every process's target copy stays equal.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from trainlab import registry
from trainlab.data.batches import micro_batches
from trainlab.errors import UserError
from trainlab.rl import envs as envs_lib
from trainlab.rl.rollouts import EnvSource, EnvStream, EnvTable


class ReplayTable(EnvTable):
    source: Literal["gym_replay"] = "gym_replay"
    num_envs: PositiveInt = 1  # environments stepped together (SB3's DQN default: one)
    buffer_size: PositiveInt = 100_000  # transitions kept; the oldest are overwritten
    learning_starts: int = Field(1000, ge=0)  # transitions of uniformly random actions before the first update
    train_freq: PositiveInt = 4  # steps of every environment between rounds of gradient steps (SB3's train_freq)
    gradient_steps: PositiveInt = 1  # optimizer steps per round
    target_update_interval: PositiveInt = 1000  # optimizer steps between target-network updates
    tau: float = Field(1.0, gt=0, le=1)  # 1 = a hard copy; < 1 = Polyak averaging
    exploration_fraction: float = Field(0.1, gt=0, le=1)  # of data.env_steps, over which epsilon falls
    exploration_initial_eps: float = Field(1.0, ge=0, le=1)
    exploration_final_eps: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _buffer_holds_a_round(self):
        if self.buffer_size < self.num_envs * self.train_freq:
            raise ValueError(f"buffer_size ({self.buffer_size}) is smaller than one round of collection "
                             f"(num_envs x train_freq = {self.num_envs * self.train_freq})")
        return self


def epsilon(env_steps: int, total: int, fraction: float, initial: float, final: float) -> float:
    """SB3's linear schedule: initial -> final over the first fraction x total environment steps."""
    progress = env_steps / max(fraction * total, 1e-12)
    return initial + (final - initial) * min(1.0, progress)


def planned_steps(cfg: ReplayTable) -> int:
    """Optimizer steps of a run of data.env_steps environment steps (rounded up to whole rounds)."""
    per_round = cfg.num_envs * cfg.train_freq
    rounds = math.ceil(cfg.env_steps / per_round)
    first = max(1, math.ceil(cfg.learning_starts / per_round))  # the first round that trains
    return max(0, rounds - first + 1) * cfg.gradient_steps


@registry.source("gym_replay", ReplayTable, provides={"observations", "transitions"})
def build(cfg: ReplayTable) -> "GymReplay":
    """Transitions of a Gymnasium environment in a replay buffer, collected epsilon-greedily (off-policy: DQN)."""
    return GymReplay(cfg)


class GymReplay(EnvSource):
    def __init__(self, cfg: ReplayTable):
        super().__init__(cfg, "gym_replay", ["observations", "transitions"])
        self.batches_per_epoch = cfg.gradient_steps  # an epoch of the loop is one round
        self.counts_steps = True  # batches_per_epoch and the run's length are optimizer steps, whatever grad_accum
        self.planned_steps = planned_steps(cfg)
        if not self.planned_steps:
            raise UserError(f"data.env_steps = {cfg.env_steps} ends before data.learning_starts = "
                            f"{cfg.learning_starts}: no gradient step would be taken",
                            "raise data.env_steps or lower data.learning_starts")

    def stream(self, seed: int, policy, plan) -> "ReplayStream":
        return ReplayStream(self, seed, policy, plan)


def _seed(seed: int, rank: int, what: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, rank, what]).generate_state(2, np.uint64)[0] % 2**62)


class ReplayStream(EnvStream):
    # on_step's keys: where the source is (shown as they are at a logging step, not averaged)
    state_metrics = ("epsilon", "episode_return", "episode_length", "episodes", "env_steps", "sps", "buffer_size")

    def __init__(self, data: GymReplay, seed: int, policy, plan):
        cfg, ctx = data.cfg, policy.ctx
        if not data.discrete:
            a = data.info["action"]
            raise UserError(f"data.source = 'gym_replay' acts epsilon-greedily among discrete actions; {cfg.env} has "
                            f"continuous actions (Box({a['dim']}))", "train it with PPO (data.source = 'gym', "
                            "model.kind = 'actor_critic'), or discretize its actions")
        if ctx is not None and getattr(ctx, "sharded", False) and ctx.world > 1:
            raise UserError("data.source = 'gym_replay' keeps a whole target network beside the model, which FSDP "
                            "shards", "train DQN with loop.parallel = 'ddp'")
        super().__init__(data, seed, policy, plan)
        self.double = bool(getattr(policy.objective, "double", False))
        self.n_actions = data.info["action"]["n"]
        shape = self.envs.obs_shape
        self.capacity = max(cfg.buffer_size // self.world, self.local * cfg.train_freq)
        self.obs = torch.zeros((self.capacity, *shape))
        self.next_obs = torch.zeros((self.capacity, *shape))
        self.actions = torch.zeros(self.capacity, dtype=torch.long)
        self.rewards = torch.zeros(self.capacity)
        self.terminated = torch.zeros(self.capacity, dtype=torch.bool)
        self.pos = self.size = 0
        self.act_gen = torch.Generator().manual_seed(_seed(seed, self.rank, 1))  # exploration
        self.sample_gen = torch.Generator().manual_seed(_seed(seed, self.rank, 2))  # minibatches
        self.target = copy.deepcopy(policy.model).eval()
        self.target.requires_grad_(False)
        self.vec_steps = self.rounds = self.left = 0  # steps of every environment; rounds; updates left in this one

    @property
    def epoch(self) -> int:
        return self.rounds

    @property
    def env_steps(self) -> int:
        return self.vec_steps * self.cfg.num_envs

    def epsilon(self) -> float:
        c = self.cfg
        return epsilon(self.env_steps, c.env_steps, c.exploration_fraction, c.exploration_initial_eps,
                       c.exploration_final_eps)

    # ------------------------------------------------------------------ collection

    def store(self, obs, actions, rewards, next_obs, terminated) -> None:
        n = len(obs)
        idx = (self.pos + torch.arange(n)) % self.capacity
        self.obs[idx], self.next_obs[idx] = obs, next_obs
        self.actions[idx], self.rewards[idx], self.terminated[idx] = actions, rewards, terminated
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    @torch.no_grad()
    def collect(self) -> None:
        """One round: data.train_freq steps of every environment, epsilon-greedy with the current weights."""
        cfg, e, device = self.cfg, self.envs, self.policy.device
        seen = []
        with self.policy.gathered() as m:
            for _ in range(cfg.train_freq):
                obs = torch.from_numpy(e.obs.copy())
                # Both draws every step, whatever is used: the generator's position depends on the steps alone.
                explore = torch.rand(self.local, generator=self.act_gen)
                actions = torch.randint(self.n_actions, (self.local,), generator=self.act_gen)
                if self.env_steps >= cfg.learning_starts:
                    explore = explore < self.epsilon()
                    if not explore.all():
                        greedy = m(obs.to(device)).float().argmax(-1).cpu()
                        actions = torch.where(explore, actions, greedy)
                _, r, term, trunc, final, finished = e.step(envs_lib.to_env_actions(actions.numpy(),
                                                                                    self.data.info["action"]))
                if self.scaler is not None:
                    r = self.scaler(r, term | trunc)
                self.store(obs, actions, torch.from_numpy(np.asarray(r, dtype=np.float32)), torch.from_numpy(final),
                           torch.from_numpy(term))
                seen.append(obs)
                self.vec_steps += 1
                self.stats.add(finished)
        model = self.policy.model
        if hasattr(model, "obs_norm"):  # the statistics move between rounds, never within a gradient step
            model.obs_norm.update(torch.cat(seen))
        self.rounds += 1

    # ------------------------------------------------------------------ the loop's calls

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        while self.left == 0:
            self.collect()
            if self.env_steps >= self.cfg.learning_starts:
                self.left = self.cfg.gradient_steps
        self.left -= 1
        idx = torch.randint(self.size, (self.share,), generator=self.sample_gen)
        next_obs = self.next_obs[idx]
        batch = {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                 "terminated": self.terminated[idx], "next_q": self.next_q(next_obs)}
        return micro_batches(batch, self.plan.accum)

    @torch.no_grad()
    def next_q(self, next_obs: torch.Tensor) -> torch.Tensor:
        """max_a Q_target(s', a); Double DQN: Q_target(s', argmax_a Q_online(s'))."""
        x = next_obs.to(self.policy.device)
        with self.policy.amp:
            q_target = self.target(x).float()
        if not self.double:
            return q_target.max(-1).values.cpu()
        with self.policy.gathered() as m:
            chosen = m(x).float().argmax(-1)
        return q_target.gather(1, chosen[:, None])[:, 0].cpu()

    @torch.no_grad()
    def update_target(self) -> None:
        online = self.policy.model.state_dict()
        params = {n for n, _ in self.policy.model.named_parameters()}
        for k, t in self.target.state_dict().items():
            src = online[k]
            if self.cfg.tau >= 1.0 or k not in params or not t.is_floating_point():
                t.copy_(src)
            else:
                t.lerp_(src.to(t.dtype), self.cfg.tau)

    def on_step(self, step: int, metrics: dict) -> dict[str, float]:
        if step % self.cfg.target_update_interval == 0:
            self.update_target()
        return {"epsilon": self.epsilon(), **self.stats.metrics(self.env_steps),
                "buffer_size": float(self.size * self.world)}

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        n = self.size
        return {"obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
                "actions": self.actions[:n].clone(), "rewards": self.rewards[:n].clone(),
                "terminated": self.terminated[:n].clone(), "pos": self.pos, "size": n,
                "act_gen": self.act_gen.get_state(), "sample_gen": self.sample_gen.get_state(),
                "target": {k: v.detach().cpu().clone() for k, v in self.target.state_dict().items()},
                "vec_steps": self.vec_steps, "rounds": self.rounds, "left": self.left, **self.env_state()}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity or tuple(state["obs"].shape[1:]) != tuple(self.obs.shape[1:]):
            raise UserError(f"the checkpoint's replay buffer holds {n} transitions of shape "
                            f"{tuple(state['obs'].shape[1:])}; this run keeps {self.capacity} of "
                            f"{tuple(self.obs.shape[1:])}", "resume with the run's data.buffer_size and data.env")
        for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, name)[:n] = state[name]
        self.size, self.pos = n, int(state["pos"])
        self.act_gen.set_state(state["act_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        self.target.load_state_dict(state["target"])
        self.vec_steps, self.rounds, self.left = int(state["vec_steps"]), int(state["rounds"]), int(state["left"])
        self.load_env_state(state)
