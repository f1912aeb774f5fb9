"""Gymnasium environments by id, vectorized, seeded, with the episode boundaries handled explicitly.

Most implementations go wrong at the end of an episode, so trainlab does it itself:

- **Resets are ours.** The vector environment runs with Gymnasium's autoreset *disabled*; after a step, the
  sub-environments that finished are reset at once (`reset_mask`) with a seed of their own. With Gymnasium's
  default (`NEXT_STEP`), the step after a done returns the first observation of the next episode with a reward
  of 0: that step is not a transition, and a learner that stores it learns from a transition that never
  happened. Here every step is a transition.
- **Terminated vs truncated.** `step` returns both, and the *final* observation of every finished episode
  (before the reset) beside the next observation: a truncated episode (a time limit) bootstraps from the value
  of its final observation; a terminated one has no future.
- **Seeds.** Episode k of sub-environment i resets with a seed drawn from (run seed, i, k), so a run sees the
  same episodes every time, whatever the number of environments stepping in parallel on other processes.
- **Resume.** An environment's internal state (positions, velocities, its random generator) cannot be read
  out in general. What can be kept is how each sub-environment got where it is: its episode's seed and the
  actions taken since that reset. `load_state_dict` resets each sub-environment with that seed and replays
  the actions, all sub-environments in one lockstep pass (the longest history first), and checks that the
  replayed observations equal the recorded ones. Gymnasium environments are deterministic given the reset
  seed and the actions, so the resumed run continues exactly; one that is not (it reads the clock, or an
  external simulator) is reported in a warning and starts fresh episodes.
"""

from __future__ import annotations

import difflib
import os
import warnings

import numpy as np

from trainlab.errors import UserError, first_line


def gymnasium():
    """The gymnasium module: an extra, imported only when an environment is made."""
    try:
        import gymnasium as gym
    except ImportError:
        raise UserError("reinforcement-learning recipes need gymnasium, which is not installed",
                        "pip install 'trainlab[rl]' (or pip install 'gymnasium[classic-control]')") from None
    return gym


def spec(env_id: str):
    """The registered spec of `env_id`, or one line naming the nearest ids."""
    gym = gymnasium()
    if ":" in env_id:  # "package.module:Env-v0": importing the module registers the environment
        module = env_id.split(":", 1)[0]
        try:
            __import__(module)
        except ImportError as e:
            raise UserError(f"data.env = '{env_id}': cannot import '{module}' ({e})",
                            "install the package that registers the environment") from None
        env_id = env_id.split(":", 1)[1]
    try:
        return gym.spec(env_id)
    except gym.error.Error as e:
        ids = list(gym.registry)
        near = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(n) for n in near)}?" if near else \
            "give a registered Gymnasium id, e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1"
        raise UserError(f"data.env = '{env_id}' is not a registered Gymnasium environment ({e})", hint) from None


def describe_space(space, env_id: str, what: str = "action") -> dict:
    """The action space as the models need it: discrete n, or a continuous vector with its bounds."""
    gym = gymnasium()
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        low, high = space.low.astype(float), space.high.astype(float)
        return {"kind": "continuous", "dim": int(space.shape[0]), "low": low.tolist(), "high": high.tolist()}
    raise UserError(f"{env_id} has the {what} space {space}; trainlab's agents support Discrete actions and "
                    "one-dimensional Box (continuous) actions", "wrap the environment (e.g. flatten or "
                    "discretize its actions) or choose another")


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, env_index, episode]).generate_state(1)[0])


class Envs:
    """`n` copies of an environment stepped together. Sub-environment i has the global index `first + i`
    (processes under torchrun hold consecutive slices), which picks its episode seeds."""

    def __init__(self, env_id: str, n: int, seed: int, vectorize: str = "sync", kwargs: dict | None = None,
                 first: int = 0, render: bool = False):
        gym = gymnasium()
        self.env_id, self.n, self.seed, self.first = env_id, n, seed, first
        s = spec(env_id)
        from gymnasium.vector import AutoresetMode

        make_kwargs = dict(kwargs or {})
        if render:
            make_kwargs["render_mode"] = "rgb_array"
            # Off-screen: without a display SDL (pygame's renderer) would print its own "error:" lines.
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        try:
            self.vec = gym.make_vec(env_id, num_envs=n, vectorization_mode=vectorize,
                                    vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED}, **make_kwargs)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot make {n} x {env_id} ({type(e).__name__}: {first_line(e, 200)})",
                            "check data.env_kwargs and that the environment's dependencies are installed "
                            "(e.g. pip install 'gymnasium[box2d]')") from None
        obs_space = self.vec.single_observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            self.close()
            raise UserError(f"{env_id} observes {obs_space}; trainlab's agents read vector (Box) observations",
                            "wrap it with gymnasium.wrappers.FlattenObservation, or choose another environment")
        self.obs_shape = tuple(obs_space.shape)
        self.action = describe_space(self.vec.single_action_space, env_id)
        self.max_steps = s.max_episode_steps or 0
        self.episode = np.zeros(n, dtype=np.int64)  # episodes started by each sub-environment
        self.history: list[list] = [[] for _ in range(n)]  # actions since each sub-environment's reset
        self.returns = np.zeros(n)  # the current episodes' undiscounted return and length
        self.lengths = np.zeros(n, dtype=np.int64)
        self.obs = None

    def _seeds(self, mask: np.ndarray) -> list[int | None]:
        return [episode_seed(self.seed, self.first + i, int(self.episode[i])) if m else None
                for i, m in enumerate(mask)]

    def reset(self) -> np.ndarray:
        """Every sub-environment starts its next episode."""
        self.obs = self._reset(np.ones(self.n, dtype=bool))
        return self.obs

    def _reset(self, mask: np.ndarray) -> np.ndarray:
        seeds = self._seeds(mask)
        try:
            if mask.all():
                obs, _ = self.vec.reset(seed=seeds)
            else:
                obs, _ = self.vec.reset(seed=seeds, options={"reset_mask": mask})
        except Exception as e:
            raise self._failed("reset", e) from None
        for i in np.flatnonzero(mask):
            self.episode[i] += 1
            self.history[i] = []
            self.returns[i], self.lengths[i] = 0.0, 0
        return self._check(np.asarray(obs), "reset")

    def step(self, actions: np.ndarray):
        """(next observations, rewards, terminated, truncated, final observations, finished episodes).
        Finished sub-environments are already reset: `next` holds their new episode's first observation and
        `final` the last observation of the one that ended (equal to `next` elsewhere). `finished` is a list
        of (return, length) of the episodes that ended in this step."""
        try:
            obs, reward, terminated, truncated, _ = self.vec.step(actions)
        except Exception as e:
            raise self._failed("step", e) from None
        obs = self._check(np.asarray(obs), "step")
        reward = np.asarray(reward, dtype=np.float64)
        if not np.isfinite(reward).all():
            i = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise UserError(f"{self.env_id} returned the reward {reward[i]} (sub-environment {self.first + i}, "
                            f"episode step {self.lengths[i] + 1})", "fix the environment's reward; the run's last "
                            "checkpoint is intact (resume it with --resume)")
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        for i in range(self.n):
            self.history[i].append(actions[i])
        self.returns += reward
        self.lengths += 1
        done = terminated | truncated
        finished = [(float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(done)]
        final = obs
        if done.any():
            final = obs.copy()
            obs = self._reset(done)
            obs = np.where(done.reshape(-1, *[1] * len(self.obs_shape)), obs, final)
        self.obs = obs
        return obs, reward, terminated, truncated, final, finished

    def _check(self, obs: np.ndarray, what: str) -> np.ndarray:
        if not np.isfinite(obs).all():
            i = int(np.flatnonzero(~np.isfinite(obs.reshape(self.n, -1)).all(1))[0])
            raise UserError(f"{self.env_id} returned a non-finite observation at {what} (sub-environment "
                            f"{self.first + i}, episode {self.episode[i]}, step {self.lengths[i] + (what == 'step')}"
                            f"): {obs[i].tolist()}"[:300], "fix or wrap the environment; the run's last checkpoint "
                            "is intact (resume it with --resume)")
        return obs.astype(np.float32, copy=False)

    def _failed(self, what: str, e: Exception) -> UserError:
        text = str(e).strip().splitlines()
        return UserError(f"{self.env_id} raised {type(e).__name__} during {what}"
                         + (f": {text[-1][:200]}" if text else ""),
                         "fix the environment; the run's last checkpoint is intact (resume it with --resume)")

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        import torch

        return {"episode": torch.from_numpy(self.episode.copy()), "returns": torch.from_numpy(self.returns.copy()),
                "lengths": torch.from_numpy(self.lengths.copy()), "obs": torch.from_numpy(self.obs.copy()),
                "history": [torch.as_tensor(np.asarray(h)) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Replay each sub-environment's episode so far: reset with its seed, then its actions, in one lockstep
        pass where sub-environment i starts at step (longest - its length) so that all end together."""
        episode = state["episode"].numpy().astype(np.int64)
        history = [h.numpy() for h in state["history"]]
        if len(episode) != self.n or len(history) != self.n:
            raise UserError(f"the checkpoint holds {len(episode)} environments; this run makes {self.n}",
                            "resume with the run's data.num_envs (and number of processes)")
        longest = max((len(h) for h in history), default=0)
        try:  # a vector environment resets in part only after a full reset
            self.vec.reset(seed=[episode_seed(self.seed, self.first + i, 0) for i in range(self.n)])
        except Exception as e:
            raise self._failed("reset", e) from None
        self.episode = episode - 1  # _reset counts the episode it starts
        obs = np.zeros((self.n, *self.obs_shape), dtype=np.float32)
        started = np.zeros(self.n, dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping a not-yet-replayed sub-environment past its end is harmless
            for t in range(longest + 1):
                start = np.array([longest - len(h) == t for h in history])
                if start.any():
                    obs = np.where(start.reshape(-1, *[1] * len(self.obs_shape)), self._reset(start), obs)
                    started |= start
                if t == longest:
                    break
                acts = [h[t - (longest - len(h))] if started[i] else self._any_action()
                        for i, h in enumerate(history)]
                try:
                    o, _, term, trunc, _ = self.vec.step(np.asarray(acts))
                    idle = (np.asarray(term) | np.asarray(trunc)) & ~started
                    if idle.any():  # a sub-environment waiting for its turn ended: keep it steppable
                        self.vec.reset(options={"reset_mask": idle})
                except Exception as e:
                    raise self._failed("the replay of its episodes on resume", e) from None
                obs = np.asarray(o, dtype=np.float32)
        self.history = [list(h) for h in history]
        self.returns = state["returns"].numpy().astype(np.float64).copy()
        self.lengths = state["lengths"].numpy().astype(np.int64).copy()
        saved = state["obs"].numpy()
        if obs.shape != saved.shape or not np.array_equal(obs, saved):
            warnings.warn(f"{self.env_id} did not replay to the observations it had when the checkpoint was "
                          "written (it is not deterministic given its seed and actions): the resumed run starts "
                          "fresh episodes", stacklevel=2)
            obs = self.reset()
        self.obs = obs

    def _any_action(self):
        a = self.action
        if a["kind"] == "discrete":
            return a["start"]
        return np.zeros(a["dim"], dtype=np.float32)

    def frames(self, policy_fn, max_frames: int = 600) -> list[np.ndarray]:
        """RGB frames of sub-environment 0's next episode played by `policy_fn(obs) -> actions`."""
        out = []
        obs = self.reset()
        for _ in range(max_frames):
            frame = self.vec.call("render")[0]
            if frame is None:
                break
            out.append(np.asarray(frame))
            obs, _, term, trunc, _, _ = self.step(policy_fn(obs))
            if term[0] or trunc[0]:
                break
        return out

    def close(self) -> None:
        try:
            self.vec.close()
        except Exception:
            pass


def to_env_actions(actions: np.ndarray, action: dict) -> np.ndarray:
    """The actions the environment receives: discrete indices shifted by the space's start; continuous
    actions clipped to the bounds (the policy's unclipped sample is what its log-probability is of)."""
    if action["kind"] == "discrete":
        return actions.astype(np.int64) + action["start"]
    return np.clip(actions, np.asarray(action["low"], np.float32), np.asarray(action["high"], np.float32))
