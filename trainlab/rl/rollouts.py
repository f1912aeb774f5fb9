"""On-policy rollouts from Gymnasium environments: the data source of PPO (`data.source = "gym"`).

A *rollout*: data.num_envs environments step data.rollout_steps times with the current weights (actions
sampled from a generator seeded by the run: a resumed run draws the same); the objective's `prepare` turns the
rewards and values into advantages (GAE, trainlab.rl.ppo). The rollout is then data.epochs_per_rollout passes
of seeded permutations, data.batch_size transitions per optimizer step (as SB3's n_epochs and batch_size), and
the next rollout starts when it is used up. An *epoch* of the loop is one rollout; the run's length is
data.env_steps environment steps (loop.steps, when set, wins).

Exact resume: the rollout (tensors), the position in it, the sampling generator, the episode statistics and
the environments (trainlab.rl.envs: their episodes replayed from seed and actions) are the stream's state.

Under torchrun each process steps num_envs / world environments (consecutive global indices, so the seeds do
not repeat) and trains on minibatches of its own rollout; DDP averages the gradients.

Logged after every step: episode_return and episode_length (the mean of the last 100 finished episodes, as
SB3's ep_rew_mean), episodes, env_steps, sps (environment steps per second of the run: collection and
training), explained_variance (of the rollout's returns by its values); the objective adds policy_loss,
value_loss, entropy, approx_kl and clip_fraction. Validation: data.eval_episodes deterministic episodes on
seeds of their own (the same every time): episode_return, return_std, episode_length.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import DataTable
from trainlab.data.batches import micro_batches
from trainlab.errors import UserError
from trainlab.rl import envs as envs_lib
from trainlab.rl.agents import combine_moments, greedy, log_prob, sample


class EnvTable(DataTable):
    env: str = "CartPole-v1"  # a Gymnasium id ("package.module:Env-v0" imports the package that registers it)
    env_kwargs: dict = {}  # keyword arguments of gymnasium.make
    num_envs: PositiveInt = 8  # environments stepped together
    vectorize: Literal["sync", "async"] = "sync"  # async: one process per environment (slow simulators)
    env_steps: PositiveInt = 100_000  # the run's environment steps (sets loop.steps unless that is given)
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return (VecNormalize)
    clip_reward: float = Field(10.0, gt=0)  # normalized rewards are clipped to +-clip_reward
    eval_episodes: PositiveInt = 10  # deterministic episodes per validation (and per `trainlab eval`)


class GymTable(EnvTable):
    source: Literal["gym"] = "gym"
    rollout_steps: PositiveInt = 32  # steps of every environment per rollout (SB3's n_steps)
    epochs_per_rollout: PositiveInt = 10  # passes over each rollout (SB3's n_epochs)


def env_info(cfg: EnvTable, source: str, capabilities: list[str]) -> dict:
    """What the model is built from: observation shape and action space, read from one environment."""
    e = envs_lib.Envs(cfg.env, 1, 0, "sync", cfg.env_kwargs)
    try:
        info = {"task": "control", "env": cfg.env, "input_shape": list(e.obs_shape), "action": e.action,
                "max_episode_steps": e.max_steps, "capabilities": capabilities,
                "split_sizes": {"train": 0, "val": cfg.eval_episodes, "test": cfg.eval_episodes}}
    finally:
        e.close()
    return info


@registry.source("gym", GymTable, provides={"observations", "rollouts"})
def build(cfg: GymTable) -> "GymRollouts":
    """Rollouts of a Gymnasium environment collected by the policy being trained (on-policy: PPO)."""
    return GymRollouts(cfg)


class EnvSource:
    """What the on-policy and the off-policy sources share: the environment's description, validation and
    `trainlab eval` by deterministic episodes."""

    unit = "tr"  # transitions

    def __init__(self, cfg: EnvTable, source: str, capabilities: list[str]):
        self.cfg = cfg
        self.info = env_info(cfg, source, capabilities)
        self.discrete = self.info["action"]["kind"] == "discrete"
        self.batch_size = cfg.batch_size

    def count(self, batch) -> int:
        return len(batch["obs"])

    def export(self, model_dir) -> None:
        pass  # the model holds everything it needs (observation statistics are buffers)

    def eval_batches(self, split: str, limit: int = 0):
        raise UserError("an environment run is evaluated by playing episodes, not by passes over fixed batches",
                        "use `trainlab eval RUN` (deterministic episodes beside a random policy)")

    def episode_seed(self, split: str) -> int:
        """Validation and test episodes have seeds of their own, never the training episodes'."""
        return int(np.random.SeedSequence([self.cfg.split_seed, {"val": 1, "test": 2}[split], 7]).generate_state(1)[0])

    def act_fn(self, model):
        discrete, action = self.discrete, self.info["action"]

        def act(obs: np.ndarray) -> np.ndarray:
            out = model(torch.from_numpy(obs).to(_device(model)))
            params = out[0] if isinstance(out, tuple) else out  # actor-critic (params, value) or Q-values
            return envs_lib.to_env_actions(greedy(params, discrete).cpu().numpy(), action)
        return act

    def episodes(self, act, split: str, n: int, chunk: int = 64) -> tuple[list[float], list[int]]:
        """Returns and lengths of n episodes (the first episode of environments 0..n-1 of the split's seeds), with
        `act` choosing; `chunk` environments at a time. An environment without a time limit whose episodes do not
        end within 100,000 steps is an error, not a hang."""
        returns, lengths = [], []
        cap = self.info.get("max_episode_steps") or 100_000
        for first in range(0, n, chunk):
            m = min(chunk, n - first)
            e = envs_lib.Envs(self.cfg.env, m, self.episode_seed(split), "sync", self.cfg.env_kwargs, first=first)
            got: list[tuple[float, int] | None] = [None] * m
            try:
                obs = e.reset()
                for _ in range(cap):
                    obs, _, term, trunc, _, finished = e.step(act(obs))
                    for i, episode in zip(np.flatnonzero(term | trunc), finished):  # (return, length)
                        if got[i] is None:
                            got[i] = episode
                    if all(g is not None for g in got):
                        break
                else:
                    raise UserError(f"{self.cfg.env}: an evaluation episode did not end within {cap:,} steps (the "
                                    "environment has no time limit)", "register it with max_episode_steps, or wrap "
                                    "it in gymnasium.wrappers.TimeLimit")
            finally:
                e.close()
            returns += [g[0] for g in got]
            lengths += [g[1] for g in got]
        return returns, lengths

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        with policy.gathered() as m:
            returns, lengths = self.episodes(self.act_fn(m), "val", self.cfg.eval_episodes)
        return {"episode_return": float(np.mean(returns)), "return_std": float(np.std(returns)),
                "episode_length": float(np.mean(lengths))}

    def evaluate_model(self, model, split: str, episodes: int = 0) -> dict:
        """`trainlab eval RUN`: deterministic episodes of the model beside a uniformly random policy on the same
        seeds (`episodes`: how many; data.eval_episodes by default)."""
        n = episodes or self.cfg.eval_episodes
        model.eval()
        rng = np.random.default_rng(self.episode_seed(split))
        space = self.info["action"]

        def random_act(obs):
            if space["kind"] == "discrete":
                return rng.integers(0, space["n"], len(obs)) + space["start"]
            low, high = np.asarray(space["low"]), np.asarray(space["high"])  # unbounded sides: within +-1
            low, high = np.where(np.isfinite(low), low, -1.0), np.where(np.isfinite(high), high, 1.0)
            return rng.uniform(low, high, (len(obs), space["dim"])).astype(np.float32)

        with torch.no_grad():
            returns, lengths = self.episodes(self.act_fn(model), split, n)
            base_returns, base_lengths = self.episodes(random_act, split, n)

        def stats(r, n_steps):
            return {"episode_return": float(np.mean(r)), "return_std": float(np.std(r)),
                    "return_min": float(np.min(r)), "return_max": float(np.max(r)),
                    "episode_length": float(np.mean(n_steps))}

        out = {"split": split, "n": n, "task": "control", "env": self.cfg.env, "metrics": stats(returns, lengths),
               "baseline": {"name": "uniformly random actions on the same episode seeds",
                            **stats(base_returns, base_lengths)},
               "returns": returns}
        return out


def record_frames(cfg: EnvTable, act, seed: int, max_frames: int = 500) -> list[np.ndarray]:
    """RGB frames of one deterministic episode; none when the environment does not render RGB frames."""
    try:
        e = envs_lib.Envs(cfg.env, 1, seed, "sync", cfg.env_kwargs, render=True)
    except UserError:
        return []
    try:
        return e.frames(act, max_frames)
    except Exception:  # a renderer without a display, a missing pygame: no recording, not a failed report
        return []
    finally:
        e.close()


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class RewardScaler:
    """Rewards divided by the running standard deviation of the discounted return (SB3's VecNormalize)."""

    def __init__(self, n: int, gamma: float, clip: float):
        self.gamma, self.clip = gamma, clip
        self.ret = np.zeros(n)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + reward
        self.mean, self.var, self.count = combine_moments(self.mean, self.var, self.count, float(self.ret.mean()),
                                                          float(self.ret.var()), len(self.ret))
        self.ret[done] = 0.0
        return np.clip(reward / math.sqrt(self.var + 1e-8), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"ret": torch.from_numpy(self.ret.copy()), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s: dict) -> None:
        self.ret = s["ret"].numpy().astype(np.float64).copy()
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), float(s["count"])


class EpisodeStats:
    """What both environment streams log about their episodes: the mean return and length of the last 100
    finished ones (SB3's ep_rew_mean window), how many finished (all processes), and environment steps per
    second since the stream started or resumed."""

    def __init__(self, world: int):
        self.world = world
        self.recent: collections.deque = collections.deque(maxlen=100)  # (return, length)
        self.done = 0
        self._t0, self._steps0 = time.time(), 0

    def add(self, finished: list[tuple[float, int]]) -> None:
        self.recent.extend(finished)
        self.done += len(finished)

    def metrics(self, env_steps: int) -> dict[str, float]:
        rets = [r for r, _ in self.recent]
        return {"episode_return": float(np.mean(rets)) if rets else 0.0,
                "episode_length": float(np.mean([n for _, n in self.recent])) if rets else 0.0,
                "episodes": float(self.done * self.world), "env_steps": float(env_steps),
                "sps": (env_steps - self._steps0) / max(time.time() - self._t0, 1e-9)}

    def state_dict(self) -> dict:
        return {"recent": torch.tensor(list(self.recent), dtype=torch.float64).reshape(-1, 2), "done": self.done}

    def load_state_dict(self, state: dict, env_steps: int) -> None:
        self.recent = collections.deque(((float(r), int(n)) for r, n in state["recent"].tolist()), maxlen=100)
        self.done = int(state["done"])
        self._t0, self._steps0 = time.time(), env_steps


class EnvStream:
    """What both environment streams share: this process's slice of data.num_envs as its environments (reset,
    seeded by their global index), reward normalization, episode statistics, and their part of the checkpoint."""

    def __init__(self, data, seed: int, policy, plan):
        cfg = data.cfg
        self.data, self.cfg, self.seed, self.policy, self.plan = data, cfg, seed, policy, plan
        ctx = policy.ctx
        self.world, self.rank = (ctx.world, ctx.rank) if ctx is not None else (1, 0)
        if cfg.num_envs % self.world:
            raise UserError(f"data.num_envs = {cfg.num_envs} does not split over {self.world} processes",
                            f"make it a multiple of {self.world}")
        self.local = cfg.num_envs // self.world
        self.share = plan.hi - plan.lo  # this process's transitions per optimizer step
        self.envs = envs_lib.Envs(cfg.env, self.local, seed, cfg.vectorize, cfg.env_kwargs,
                                  first=self.rank * self.local)
        self.envs.reset()
        gamma = getattr(getattr(policy.objective, "cfg", None), "gamma", 0.99)
        self.scaler = RewardScaler(self.local, gamma, cfg.clip_reward) if cfg.normalize_reward else None
        self.stats = EpisodeStats(self.world)

    def env_state(self) -> dict:
        return {"envs": self.envs.state_dict(), "episodes": self.stats.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_env_state(self, state: dict) -> None:
        """After the stream's own counters: the episode statistics restart their clock at env_steps."""
        self.envs.load_state_dict(state["envs"])
        self.stats.load_state_dict(state["episodes"], self.env_steps)
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


class GymRollouts(EnvSource):
    def __init__(self, cfg: GymTable):
        super().__init__(cfg, "gym", ["observations", "rollouts"])
        per_rollout = cfg.num_envs * cfg.rollout_steps * cfg.epochs_per_rollout
        self.batches_per_epoch = max(1, per_rollout // cfg.batch_size)  # an epoch is one rollout
        rollouts = math.ceil(cfg.env_steps / (cfg.num_envs * cfg.rollout_steps))
        self.planned_steps = rollouts * self.batches_per_epoch

    def stream(self, seed: int, policy, plan) -> "RolloutStream":
        return RolloutStream(self, seed, policy, plan)


class RolloutStream(EnvStream):
    # on_step's keys: where the source is (shown as they are at a logging step, not averaged)
    state_metrics = ("episode_return", "episode_length", "episodes", "env_steps", "sps", "explained_variance")

    def __init__(self, data: GymRollouts, seed: int, policy, plan):
        cfg = data.cfg
        size = cfg.num_envs * cfg.rollout_steps
        if size % plan.global_batch:  # every pass over the rollout is whole minibatches: none spans two passes
            raise UserError(f"a rollout of data.num_envs x data.rollout_steps = {size} transitions does not split "
                            f"into minibatches of {plan.global_batch} (data.batch_size x loop.grad_accum)",
                            "make num_envs x rollout_steps a multiple of the batch")
        self.steps_per_rollout = size * cfg.epochs_per_rollout // plan.global_batch
        self.objective = policy.objective
        if not hasattr(self.objective, "prepare"):
            raise UserError("data.source = 'gym' collects on-policy rollouts for an objective with advantages "
                            "(objective.kind = 'rl_ppo'); this one has no `prepare`", "use objective.kind = 'rl_ppo'")
        super().__init__(data, seed, policy, plan)
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + self.rank)  # actions and minibatch orders
        self.rollout: dict | None = None
        self.order: torch.Tensor | None = None
        self.pos = self.rollouts = 0
        self.explained = 0.0

    @property
    def epoch(self) -> int:
        return self.rollouts

    @property
    def env_steps(self) -> int:
        return self.rollouts * self.cfg.num_envs * self.cfg.rollout_steps

    # ------------------------------------------------------------------ a rollout

    @torch.no_grad()
    def collect(self) -> None:
        cfg, e, device = self.cfg, self.envs, self.policy.device
        T, n = cfg.rollout_steps, self.local
        model = self.policy.model
        if self.rollout is not None and hasattr(model, "obs_norm"):
            # The statistics move between rollouts, never within one: the rollout's log-probabilities and
            # values, and the training passes over it, see the same normalization.
            model.obs_norm.update(self.rollout["obs"])
        obs_buf = torch.zeros((T, n, *e.obs_shape))
        act_shape = () if self.data.discrete else (self.data.info["action"]["dim"],)
        actions = torch.zeros((T, n, *act_shape), dtype=torch.long if self.data.discrete else torch.float32)
        logp, values, rewards, next_values = (torch.zeros(T, n) for _ in range(4))
        terminated, truncated = torch.zeros(T, n, dtype=torch.bool), torch.zeros(T, n, dtype=torch.bool)
        with self.policy.gathered() as m:
            for t in range(T):
                o = torch.from_numpy(e.obs)
                params, v = m(o.to(device))
                params = params.float().cpu()  # sampled on the CPU, from the run's generator
                a = sample(params, self.data.discrete, self.gen)
                obs_buf[t], actions[t] = o, a
                logp[t], values[t] = log_prob(params, a, self.data.discrete), v.float().cpu()
                _, r, term, trunc, final, finished = e.step(envs_lib.to_env_actions(a.numpy(),
                                                                                    self.data.info["action"]))
                done = term | trunc
                rewards[t] = torch.from_numpy(self.scaler(r, done) if self.scaler else r).float()
                terminated[t], truncated[t] = torch.from_numpy(term), torch.from_numpy(trunc)
                if trunc.any():  # a time limit: the episode's future is the value of its final observation
                    idx = np.flatnonzero(trunc)
                    next_values[t, idx] = m(torch.from_numpy(final[idx]).to(device))[1].float().cpu()
                self.stats.add(finished)
            last = m(torch.from_numpy(e.obs).to(device))[1].float().cpu()
        following = torch.cat([values[1:], last[None]])
        next_values = torch.where(terminated | truncated, next_values, following)
        rollout = self.objective.prepare({"obs": obs_buf, "actions": actions, "logp": logp, "values": values,
                                          "rewards": rewards, "next_values": next_values,
                                          "terminated": terminated, "truncated": truncated})
        ret, val = rollout["returns"].flatten(), values.flatten()
        var = float(ret.var()) if len(ret) > 1 else 0.0
        self.explained = 1.0 - float((ret - val).var()) / var if var > 0 else 0.0
        keep = ("obs", "actions", "logp", "values", "advantages", "returns")
        self.rollout = {k: rollout[k].flatten(0, 1) for k in keep}
        size = T * n
        self.order = torch.cat([torch.randperm(size, generator=self.gen) for _ in range(cfg.epochs_per_rollout)])
        self.pos = 0
        self.rollouts += 1

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        if self.rollout is None or self.pos == self.steps_per_rollout:
            self.collect()
        ids = self.order[self.pos * self.share:(self.pos + 1) * self.share]
        self.pos += 1
        batch = {k: v[ids] for k, v in self.rollout.items()}
        if getattr(self.objective.cfg, "normalize_advantage", False) and len(ids) > 1:
            # Over the whole minibatch (this process's share of it), not per micro-batch, as SB3 does.
            adv = batch["advantages"]
            batch["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)
        return micro_batches(batch, self.plan.accum)

    def on_step(self, step: int, metrics: dict) -> dict[str, float]:
        return {**self.stats.metrics(self.env_steps), "explained_variance": self.explained}

    def state_dict(self) -> dict:
        return {"rollout": self.rollout, "order": self.order, "pos": self.pos, "rollouts": self.rollouts,
                "gen": self.gen.get_state(), "explained": self.explained, **self.env_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rollout, self.order = state["rollout"], state["order"]
        self.pos, self.rollouts = int(state["pos"]), int(state["rollouts"])
        self.gen.set_state(state["gen"])
        self.explained = float(state["explained"])
        self.load_env_state(state)
