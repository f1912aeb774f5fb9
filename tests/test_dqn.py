"""DQN through the one loop: the TD target by hand, the replay buffer, the exploration schedule, a short CartPole
run, exact resume, and a continuous environment refused in one line."""

import json
from contextlib import nullcontext

import pytest
import torch
from torch import nn

pytest.importorskip("gymnasium")

from trainlab import config, distributed, loop  # noqa: E402
from trainlab.policy import Policy  # noqa: E402
from trainlab.rl import dqn, replay  # noqa: E402
from tests.conftest import run_cli, tiny, train_killed_after  # noqa: E402

FIXED = {"epsilon", "episode_return", "episode_length", "episodes", "env_steps", "sps", "buffer_size"}
SHORT = ["data.env_steps=2000", "data.learning_starts=64", "data.train_freq=16", "data.gradient_steps=4",
         "data.buffer_size=256", "data.target_update_interval=3", "data.eval_episodes=2", "model.hidden=[16]"]


def stream_for(**keys):
    """A gym_replay stream on CartPole over a tiny Q-network, outside the loop."""
    cfg = config.data_table(source="gym_replay", env="CartPole-v1", batch_size=4, **keys)
    data = replay.GymReplay(cfg)
    from trainlab import models

    model = models.build(config.model_table(kind="q_network", hidden=[8]), data.info)
    objective = dqn.DQN(dqn.DQNTable())
    policy = Policy(model, model, torch.device("cpu"), nullcontext(), None, objective)
    return data.stream(0, policy, distributed.plan(4, 1, 1, 0))


def test_the_td_target_by_hand():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    terminated = torch.tensor([False, True, False])  # the third ended by a time limit: it bootstraps
    next_q = torch.tensor([2.0, 5.0, 3.0])
    y = dqn.td_target(rewards, terminated, next_q, 0.9)
    assert torch.allclose(y, torch.tensor([1 + 0.9 * 2, 1.0, 1 + 0.9 * 3]))


class Columns(nn.Module):
    """Q(s, .) = two columns of the observation: online reads 0:2, the target 2:4."""

    def __init__(self, lo):
        super().__init__()
        self.lo, self.w = lo, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, self.lo:self.lo + 2] + self.w


def test_next_q_is_the_target_max_or_the_target_value_of_the_online_choice():
    s = stream_for()
    s.target, s.policy.model = Columns(2), Columns(0)
    s.policy.forward = s.policy.model
    nxt = torch.tensor([[1.0, 0.0, 5.0, 7.0], [0.0, 1.0, 5.0, 7.0], [0.0, 1.0, 9.0, 2.0]])
    assert s.next_q(nxt).tolist() == [7.0, 7.0, 9.0]  # max_a Q_target(s', a)
    s.double = True
    assert s.next_q(nxt).tolist() == [5.0, 7.0, 2.0]  # Q_target(s', argmax_a Q_online(s'))
    y = dqn.td_target(torch.ones(3), torch.tensor([False, False, True]), s.next_q(nxt), 0.5)
    assert y.tolist() == [3.5, 4.5, 1.0]
    s.envs.close()


def test_the_replay_buffer_wraps_around_and_keeps_final_observations():
    s = stream_for(buffer_size=8, num_envs=2, train_freq=3, learning_starts=0)
    obs = torch.arange(5.0)[:, None].expand(5, 4)
    s.store(obs, torch.zeros(5, dtype=torch.long), torch.arange(5.0), obs + 100, torch.zeros(5, dtype=torch.bool))
    assert (s.pos, s.size) == (5, 5)
    s.store(obs + 5, torch.zeros(5, dtype=torch.long), torch.arange(5.0, 10.0), obs + 105,
            torch.zeros(5, dtype=torch.bool))
    assert (s.pos, s.size) == (2, 8)
    assert s.rewards.tolist() == [8, 9, 2, 3, 4, 5, 6, 7]  # the two oldest were overwritten
    assert s.next_obs[0, 0] == 108
    # Collection: a round of num_envs x train_freq transitions; next_obs follows obs within an episode
    s2 = stream_for(buffer_size=8, num_envs=2, train_freq=3, learning_starts=0)
    s2.collect()
    s2.collect()
    assert (s2.size, s2.pos, s2.env_steps) == (8, 4, 12)
    s3 = stream_for(buffer_size=64, num_envs=1, train_freq=40, learning_starts=0)
    s3.collect()
    for i in range(39):
        if s3.terminated[i]:
            assert not torch.equal(s3.next_obs[i], s3.obs[i + 1])  # the final observation, not the reset one
        else:
            assert torch.equal(s3.next_obs[i], s3.obs[i + 1])
    assert s3.terminated[:40].any()  # a random CartPole episode ends within 40 steps
    for s in (s2, s3):
        s.envs.close()


def test_the_exploration_schedule_and_the_run_length():
    eps = [replay.epsilon(n, 1000, 0.1, 1.0, 0.05) for n in (0, 50, 100, 900)]
    assert eps == pytest.approx([1.0, 0.525, 0.05, 0.05])
    rz = config.load_recipe("cartpole-dqn", [])
    assert replay.planned_steps(rz.data) == 193 * 128  # SB3: rounds 4..196 of 256 steps train, 128 updates each


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_short_cartpole_dqn_run_logs_the_fixed_keys_every_step(tmp_path):
    s = loop.train(tiny("cartpole-dqn", *SHORT, "loop.threads=1"), tmp_path / "r")
    train = [r for r in rows(tmp_path / "r") if r["split"] == "train"]
    assert len(train) == 12 and all(FIXED | {"loss", "q_mean", "td_error"} <= set(r) for r in train)
    # learning_starts 64, then rounds of 16 environment steps with 4 updates each
    assert [r["env_steps"] for r in train] == [64] * 4 + [80] * 4 + [96] * 4
    assert train[-1]["buffer_size"] == 96 and train[0]["epsilon"] > train[-1]["epsilon"] > 0.05
    assert s["status"] == "completed" and "episode_return" in s["metrics"]["val"]


def test_dqn_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny("cartpole-dqn", *SHORT, "loop.threads=1", "loop.eval_every=3", "data.tau=0.5",
               "objective.double=true")
    loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 6, monkeypatch)  # in the middle of the second round
    loop.train(cfg, tmp_path / "cut", resume=True)

    def comparable(d):
        return [{k: v for k, v in r.items() if k not in ("time", "throughput", "sps")} for r in rows(d)]

    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")


def test_dqn_on_a_continuous_environment_is_one_clear_error(tmp_path):
    r = run_cli("train", "cartpole-dqn", "--run-dir", str(tmp_path / "p"), "data.env=Pendulum-v1",
                "loop.threads=1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[0].startswith("error: ") and "continuous" in lines[0]
    assert len([line for line in lines if line.startswith("error:")]) == 1 and "Traceback" not in r.stderr
