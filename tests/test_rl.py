"""Reinforcement learning on Gymnasium: episode boundaries, GAE, PPO through the one loop, exact resume, eval,
report and bad input. The environments below are registered by this module (Gymnasium's registry), so the
episode boundaries are known exactly."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import run_cli, train_killed_after, train_sigkilled
from trainlab import config, loop
from trainlab.rl import envs as envs_lib
from trainlab.rl.agents import ActorCriticTable, ActorCritic, entropy, log_prob, sample
from trainlab.rl.ppo import gae


class Counter(gym.Env):
    """obs = [steps taken, seed-dependent offset]; reward 1 per step; terminates when action 1 is taken at an
    odd step; truncated by the time limit (4) otherwise. `nan_at` / `raise_at`: a broken environment."""

    def __init__(self, nan_at: int = 0, raise_at: int = 0):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.nan_at, self.raise_at = nan_at, raise_at
        self.t, self.offset = 0, 0.0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.offset = 0, float(self.np_random.integers(0, 1000))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t, self.offset], np.float32)

    def step(self, action):
        self.t += 1
        if self.raise_at and self.t == self.raise_at:
            raise RuntimeError("the simulator lost its connection")
        obs = self._obs()
        if self.nan_at and self.t == self.nan_at:
            obs[0] = np.nan
        return obs, 1.0, bool(action == 1 and self.t % 2 == 1), False, {}


gym.register("TestCounter-v0", entry_point=Counter, max_episode_steps=4)
gym.register("TestNaN-v0", entry_point=Counter, max_episode_steps=50, kwargs={"nan_at": 5})
gym.register("TestRaises-v0", entry_point=Counter, max_episode_steps=50, kwargs={"raise_at": 5})


# ------------------------------------------------------------------------------------------ episode boundaries


def test_a_truncated_episode_gives_its_final_observation_and_the_next_episode_starts_in_the_same_step():
    e = envs_lib.Envs("TestCounter-v0", 2, seed=0)
    first = e.reset()
    assert first[:, 0].tolist() == [0, 0]
    for t in range(1, 4):  # action 0 never terminates: the time limit truncates at step 4
        obs, r, term, trunc, final, finished = e.step(np.array([0, 0]))
        assert obs[:, 0].tolist() == [t, t] and not term.any() and not trunc.any() and finished == []
    obs, r, term, trunc, final, finished = e.step(np.array([0, 0]))
    assert trunc.all() and not term.any()
    assert final[:, 0].tolist() == [4, 4]  # what a truncated episode bootstraps from
    assert obs[:, 0].tolist() == [0, 0]  # already the next episode: the next step is a real transition
    assert finished == [(4.0, 4), (4.0, 4)]
    assert not np.array_equal(obs[:, 1], first[:, 1])  # a new episode seed
    obs, r, term, trunc, final, _ = e.step(np.array([1, 0]))  # step 1 of the new episode: a terminal action
    assert term.tolist() == [True, False] and obs[0, 0] == 0 and final[0, 0] == 1 and obs[1, 0] == 1
    e.close()


def test_gymnasiums_default_autoreset_inserts_a_step_that_is_not_a_transition():
    """What trainlab avoids: with NEXT_STEP autoreset, the call after a done returns the reset observation with
    reward 0 whatever the action was; a learner storing it would learn from a transition that never happened."""
    v = gym.make_vec("TestCounter-v0", num_envs=1, vectorization_mode="sync")
    v.reset(seed=0)
    for _ in range(4):
        v.step(np.array([0]))
    obs, reward, term, trunc, _ = v.step(np.array([1]))
    assert obs[0, 0] == 0 and reward[0] == 0 and not term[0] and not trunc[0]
    v.close()
    e = envs_lib.Envs("TestCounter-v0", 1, seed=0)
    e.reset()
    transitions = [e.step(np.array([0]))[1][0] for _ in range(8)]
    assert transitions == [1.0] * 8  # every step is a transition of some episode
    e.close()


def test_episode_seeds_depend_on_the_run_seed_and_the_global_index_only():
    a = envs_lib.Envs("TestCounter-v0", 4, seed=3)
    b = envs_lib.Envs("TestCounter-v0", 2, seed=3, first=2)  # the second half, as process 1 of 2 holds it
    assert np.array_equal(a.reset()[2:], b.reset())
    a.close(), b.close()


@pytest.mark.parametrize("vectorize", ["sync", "async"])
def test_environments_resume_by_replaying_their_episodes(vectorize):
    rng = np.random.default_rng(0)
    e = envs_lib.Envs("CartPole-v1", 3, seed=5, vectorize=vectorize)
    e.reset()
    for _ in range(40):  # episodes of different lengths in progress
        e.step(rng.integers(0, 2, 3))
    state = e.state_dict()
    actions = rng.integers(0, 2, (30, 3))
    after = [e.step(a) for a in actions]
    e.close()
    f = envs_lib.Envs("CartPole-v1", 3, seed=5, vectorize=vectorize)
    f.load_state_dict(state)
    assert np.array_equal(f.obs, state["obs"].numpy())
    for a, want in zip(actions, after):
        got = f.step(a)
        assert all(np.array_equal(x, y) for x, y in zip(got[:5], want[:5])) and got[5] == want[5]
    f.close()


# ------------------------------------------------------------------------------------------ GAE and PPO's pieces


def test_gae_by_hand_with_a_truncation_and_a_termination():
    """One environment, 5 steps: episode A is truncated after step 1, episode B terminates at step 3, episode C
    is still running at the end of the rollout (bootstrapped from the value after it)."""
    g, lam = 0.9, 0.5
    r = torch.tensor([[1.0], [2.0], [0.0], [3.0], [1.0]])
    v = torch.tensor([[0.5], [1.0], [2.0], [1.5], [0.2]])
    nxt = torch.tensor([[1.0], [4.0], [1.5], [9.9], [0.3]])  # step 1: V(final obs of A) = 4; step 3: ignored
    term = torch.tensor([[False], [False], [False], [True], [False]])
    trunc = torch.tensor([[False], [True], [False], [False], [False]])
    adv, ret = gae(r, v, nxt, term, trunc, g, lam)
    d4 = 1 + 0.9 * 0.3 - 0.2  # 1.07, the last step bootstraps from the value after the rollout
    d3 = 3 - 1.5  # terminated: no future
    d2 = 0 + 0.9 * 1.5 - 2.0  # -0.65
    d1 = 2 + 0.9 * 4.0 - 1.0  # truncated: the final observation's value, 4.6
    d0 = 1 + 0.9 * 1.0 - 0.5  # 1.4
    a4, a3 = d4, d3  # B's end cuts the sum: C's deltas do not leak into B
    a2 = d2 + g * lam * a3
    a1 = d1  # A's end: nothing of B
    a0 = d0 + g * lam * a1
    assert adv[:, 0].tolist() == pytest.approx([a0, a1, a2, a3, a4], abs=1e-6)
    assert ret[:, 0].tolist() == pytest.approx([a + b for a, b in zip([a0, a1, a2, a3, a4], v[:, 0].tolist())], abs=1e-6)


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    mean, log_std = torch.randn(5, 3), torch.randn(5, 3) * 0.3
    params = torch.cat([mean, log_std], -1)
    a = sample(params, False, torch.Generator().manual_seed(0))
    d = torch.distributions.Normal(mean, log_std.exp())
    assert log_prob(params, a, False) == pytest.approx(d.log_prob(a).sum(-1), abs=1e-5)
    assert entropy(params, False) == pytest.approx(d.entropy().sum(-1), abs=1e-5)
    logits = torch.randn(5, 4)
    c = torch.distributions.Categorical(logits=logits)
    acts = torch.tensor([0, 1, 2, 3, 1])
    assert log_prob(logits, acts, True) == pytest.approx(c.log_prob(acts), abs=1e-6)
    assert entropy(logits, True) == pytest.approx(c.entropy(), abs=1e-6)


def test_observation_normalization_is_a_running_mean_and_variance_of_everything_seen():
    m = ActorCritic(ActorCriticTable(normalize_obs=True), (3,), {"kind": "discrete", "n": 2, "start": 0})
    xs = torch.randn(300, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 7.0])
    for chunk in xs.split(37):
        m.obs_norm.update(chunk)
    assert m.obs_norm.mean.float() == pytest.approx(xs.mean(0), abs=1e-3)
    assert m.obs_norm.var.float() == pytest.approx(xs.var(0, unbiased=False), rel=1e-3, abs=1e-4)  # the prior: 1e-4 of a count


def test_a_truncated_step_bootstraps_from_the_value_of_its_final_observation(tmp_path, monkeypatch):
    """The first rollout's next values, checked against the model that collected it: a truncated step's is the
    value of its final observation [4, offset], a terminated step's is not used, any other step's is the value
    of the next observation."""
    import copy

    from trainlab.rl import ppo, rollouts

    seen = {}
    real_prepare, real_collect = ppo.RLPPO.prepare, rollouts.RolloutStream.collect

    def collect(self):
        seen.setdefault("model", copy.deepcopy(self.policy.model).eval())
        return real_collect(self)

    monkeypatch.setattr(rollouts.RolloutStream, "collect", collect)
    monkeypatch.setattr(ppo.RLPPO, "prepare", lambda self, r: real_prepare(self, seen.setdefault("rollout", r)))
    cfg = recipe("data.env=TestCounter-v0", "data.num_envs=2", "data.rollout_steps=6", "data.epochs_per_rollout=1",
                 "data.batch_size=12", "data.env_steps=12", "loop.eval_every=1")
    loop.train(cfg, tmp_path / "r")
    r, model = seen["rollout"], seen["model"]
    def value(obs):
        with torch.no_grad():
            return float(model(obs[None])[1][0])

    assert r["truncated"].any() and r["terminated"].any()
    for t in range(6):
        for i in range(2):
            obs = r["obs"][t, i]
            if r["truncated"][t, i]:
                final = torch.tensor([obs[0] + 1, obs[1]])
                assert obs[0] == 3 and float(r["next_values"][t, i]) == pytest.approx(value(final), abs=1e-6)
            elif not r["terminated"][t, i] and t + 1 < 6:
                assert float(r["next_values"][t, i]) == float(r["values"][t + 1, i])
                assert r["obs"][t + 1, i, 0] == obs[0] + 1  # the same episode goes on


# ------------------------------------------------------------------------------------------ through the one loop


def recipe(*overrides: str) -> config.Config:
    return config.load_recipe("cartpole-ppo", ["data.env_steps=2048", "loop.eval_every=40", "loop.log_every=10",
                                               "data.eval_episodes=2", "loop.threads=1", *overrides])


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(run_dir):
    timing = ("time", "throughput", "sps")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows(run_dir)]


def test_ppo_trains_through_the_loop_and_logs_what_ppo_users_read(tmp_path):
    s = loop.train(recipe(), tmp_path / "r")
    assert s["steps"] == 8 * 20  # 2048 env steps = 8 rollouts of 256, 20 epochs of one minibatch each
    train = [r for r in rows(tmp_path / "r") if r["split"] == "train"]
    for key in ("episode_return", "episode_length", "env_steps", "sps", "approx_kl", "clip_fraction",
                "explained_variance", "entropy", "policy_loss", "value_loss"):
        assert all(key in r for r in train), key
    assert train[-1]["env_steps"] == 2048 and train[-1]["episodes"] > 0
    # The source's counters are shown as they are, not averaged over the logging window
    assert s["metrics"]["train"]["env_steps"] == 2048 and s["metrics"]["train"]["episodes"] == train[-1]["episodes"]
    val = [r for r in rows(tmp_path / "r") if r["split"] == "val"]
    assert val[0]["step"] == 0 and {"episode_return", "return_std", "episode_length"} <= set(val[0])


def test_ppo_resumes_exactly_in_the_middle_of_a_rollout(tmp_path, monkeypatch):
    cfg = recipe("loop.checkpoint_every=30", "data.normalize_reward=true", "model.normalize_obs=true")
    loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 90, monkeypatch)  # rollout 5, its 10th minibatch
    loop.train(cfg, tmp_path / "cut", resume=True)
    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")


def test_continuous_actions_train_on_pendulum(tmp_path):
    s = loop.train(config.load_recipe("pendulum-ppo", ["data.env_steps=512", "data.rollout_steps=64",
                                                       "data.epochs_per_rollout=2", "loop.eval_every=8",
                                                       "data.eval_episodes=1", "loop.threads=1"]), tmp_path / "p")
    assert s["steps"] == 16
    assert s["status"] == "completed" and math.isfinite(s["metrics"]["val"]["episode_return"])


@pytest.mark.slow
def test_ppo_learns_cartpole(tmp_path):
    s = loop.train(recipe("data.env_steps=20480", "loop.eval_every=800", "data.eval_episodes=5"), tmp_path / "r")
    val = [r for r in rows(tmp_path / "r") if r["split"] == "val"]
    assert val[0]["episode_return"] < 50 and s["best"]["value"] > 150, [v["episode_return"] for v in val]


@pytest.mark.slow
def test_a_sigkilled_ppo_run_resumes_exactly(tmp_path):
    args = ["cartpole-ppo", "data.env_steps=2048", "loop.eval_every=40", "loop.checkpoint_every=25",
            "data.eval_episodes=2", "loop.threads=1", "data.vectorize=async", "data.num_envs=4",
            "data.rollout_steps=64"]
    assert run_cli("train", *args, "--run-dir", str(tmp_path / "full")).returncode == 0
    killed = tmp_path / "killed"
    train_sigkilled(args, killed)
    r = run_cli("train", *args, "--run-dir", str(killed), "--resume")
    assert r.returncode == 0 and "resuming at step" in r.stdout, (r.stdout[-1500:], r.stderr)
    assert comparable(tmp_path / "full") == comparable(killed)


@pytest.mark.slow
def test_eval_plays_deterministic_episodes_beside_a_random_policy_and_report_draws_returns(tmp_path):
    run = tmp_path / "r"
    loop.train(recipe("data.env_steps=256"), run)
    r = run_cli("eval", str(run), "--split", "test", "--episodes", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 3 and len(out["returns"]) == 3 and out["task"] == "control"
    assert {"episode_return", "return_std"} <= set(out["metrics"]) and "random" in out["baseline"]["name"]
    again = json.loads(run_cli("eval", str(run), "--split", "test", "--episodes", "3", "--json").stdout)
    assert again["returns"] == out["returns"]  # the same seeded episodes every time
    assert "3 episodes" in run_cli("eval", str(run), "--episodes", "3").stdout
    assert json.loads(run_cli("eval", str(run), "--split", "test", "--episodes", "3", "--json").stdout)["returns"] \
        == out["returns"]  # in chunks or at once: the same episodes
    from trainlab import data as data_lib
    from trainlab import models

    src = data_lib.build(config.load_resolved(run / "config.toml").data)
    model, _ = models.load(run / "model")
    with torch.no_grad():
        assert src.episodes(src.act_fn(model), "test", 3, chunk=2)[0] == out["returns"]
    r = run_cli("report", str(run))
    assert r.returncode == 0, r.stderr
    md = (run / "report.md").read_text()
    assert "Return against environment steps" in md and (run / "returns.png").is_file()
    assert (run / "episode.gif").is_file() and (run / "episode_frames.png").is_file()
    from PIL import Image

    with Image.open(run / "episode.gif") as gif:
        assert gif.n_frames > 3


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("overrides, expected", [
    (["data.env=CartPol-v1"], "not a registered Gymnasium environment"),
    (["data.env=FrozenLake-v1"], "vector (Box) observations"),
    (["data.env=CartPole-v1", "model.action=continuous"], "CartPole-v1 has discrete actions"),
    (["data.batch_size=100"], "does not split into minibatches of 100"),
    (["data.rollout_steps=40"], "a rollout of data.num_envs x data.rollout_steps = 320 transitions"),
    (["data.env=TestNaN-v0"], "non-finite observation"),
    (["data.env=TestRaises-v0"], "raised RuntimeError during step: the simulator lost its connection"),
])
def test_bad_environments_and_recipes_are_one_line(tmp_path, overrides, expected):
    r = run_cli("train", "cartpole-ppo", "data.env_steps=512", "data.eval_episodes=1", "loop.threads=1", *overrides,
                "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    if "TestNaN" in overrides[0]:
        assert "did you mean" not in r.stderr


class FailsLater(Counter):
    """Raises at the 600th step of all its instances together: in the third rollout of the run below."""
    total = 0

    def step(self, action):
        FailsLater.total += 1
        if FailsLater.total == 600:
            raise RuntimeError("the simulator lost its connection")
        return super().step(action)


def test_a_broken_environment_leaves_the_last_checkpoint_intact(tmp_path):
    gym.register("TestLate-v0", entry_point=FailsLater, max_episode_steps=4)
    FailsLater.total = 0
    r = run_cli("train", "cartpole-ppo", "data.env=TestLate-v0", "data.num_envs=1", "data.rollout_steps=256",
                "data.epochs_per_rollout=1", "data.env_steps=2048", "data.eval_episodes=1", "loop.eval_every=1",
                "loop.threads=1", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "lost its connection" in r.stderr and "intact" in r.stderr, r.stderr
    last = (tmp_path / "r" / "checkpoints" / "last").resolve()
    assert last.name == "step-0000002" and (last / "model.safetensors").is_file()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] != "completed"
