"""A toy online source through the one loop: a contextual bandit whose arms are pulled by the model being
trained. It is registered here, from outside trainlab, as a user's own source and objective would be: the
stream runs the current policy (no gradients) to act, `on_step` updates a reward baseline it owns and reports
it, validation is the source's own (the greedy policy's expected reward), and the run resumes exactly."""

import json
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt

from trainlab import config, loop, registry
from trainlab.config import DataTable, ObjectiveTable
from tests.conftest import train_killed_after

ARMS, FEATURES = 4, 6


class BanditData(DataTable):
    source: Literal["bandit"] = "bandit"
    noise: float = 0.5  # standard deviation of the reward noise
    val_contexts: PositiveInt = 256


class PolicyGradient(ObjectiveTable):
    kind: Literal["policy_gradient"] = "policy_gradient"


@registry.objective("policy_gradient", PolicyGradient, needs={"predictions"}, data_needs={"rewards"})
def build_objective(cfg, info):
    """REINFORCE with a baseline: -(r - b) log pi(a | x)."""
    return Reinforce()


class Reinforce:
    def loss(self, model, batch):
        logp = F.log_softmax(model(batch["x"]).float(), -1).gather(1, batch["action"][:, None])[:, 0]
        advantage = batch["reward"] - batch["baseline"]
        return -(advantage * logp).mean(), {"reward": batch["reward"].mean()}


def true_rewards(x: torch.Tensor) -> torch.Tensor:
    w = torch.Generator().manual_seed(123)
    return x @ torch.randn(FEATURES, ARMS, generator=w)  # (B, ARMS): the expected reward of every arm


@registry.source("bandit", BanditData, provides={"features", "rewards"})
def build_source(cfg: BanditData):
    """A contextual bandit with 4 arms."""
    return Bandit(cfg)


class Bandit:
    unit = "ex"

    def __init__(self, cfg: BanditData):
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.split_seed)
        self.val_x = torch.randn(cfg.val_contexts, FEATURES, generator=g)
        self.info = {"task": "classification", "input_shape": [FEATURES], "num_classes": ARMS,
                     "class_names": [str(a) for a in range(ARMS)], "capabilities": ["features", "rewards"],
                     "split_sizes": {"train": 0, "val": cfg.val_contexts, "test": 0}}
        self.batch_size, self.batches_per_epoch = cfg.batch_size, 10

    def count(self, batch):
        return len(batch["x"])

    def export(self, model_dir):
        pass

    def stream(self, seed, policy, plan):
        return BanditStream(self.cfg, seed, policy, plan)

    def validate(self, policy, limit=0):
        r = true_rewards(self.val_x)
        chosen = policy(self.val_x.to(policy.device)).argmax(-1).cpu()
        got = r.gather(1, chosen[:, None])[:, 0].mean()
        return {"reward": float(got), "regret": float(r.max(1).values.mean() - got)}


class BanditStream:
    def __init__(self, cfg, seed, policy, plan):
        self.cfg, self.seed, self.policy, self.plan = cfg, seed, policy, plan
        self.step, self.baseline, self.last = 0, 0.0, 0.0

    @property
    def epoch(self):
        return self.step // 10

    def next_step(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        n = self.plan.batches * self.cfg.batch_size
        x = torch.randn(n, FEATURES, generator=g)
        probs = self.policy(x.to(self.policy.device)).float().softmax(-1).cpu()  # the current model acts
        action = torch.multinomial(probs, 1, generator=g)[:, 0]
        reward = true_rewards(x).gather(1, action[:, None])[:, 0] + self.cfg.noise * torch.randn(n, generator=g)
        self.step += 1
        self.last = float(reward.mean())
        batch = {"x": x, "action": action, "reward": reward, "baseline": torch.full((n,), self.baseline)}
        part = (self.plan.hi - self.plan.lo) // self.plan.accum
        return [{k: v[self.plan.lo + i * part:self.plan.lo + (i + 1) * part] for k, v in batch.items()}
                for i in range(self.plan.accum)]

    def on_step(self, step, metrics):
        self.baseline = 0.9 * self.baseline + 0.1 * self.last  # a running mean of the rewards seen
        return {"baseline": self.baseline}

    def state_dict(self):
        return {"step": self.step, "baseline": self.baseline, "last": self.last}

    def load_state_dict(self, state):
        self.step, self.baseline, self.last = int(state["step"]), float(state["baseline"]), float(state["last"])


def recipe(**loop_keys):
    return config.validate({
        "data": {"source": "bandit", "batch_size": 64}, "model": {"kind": "mlp", "hidden": [32], "norm": "none"},
        "objective": {"kind": "policy_gradient"}, "optim": {"lr": 0.02},
        "loop": {"steps": 60, "eval_every": 20, "log_every": 10, "monitor": "reward", "monitor_mode": "max",
                 **loop_keys}})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_bandit_learns_through_the_one_loop_with_on_step_and_its_own_validation(tmp_path):
    s = loop.train(recipe(), tmp_path / "r")
    vals = [r for r in rows(tmp_path / "r") if r["split"] == "val"]
    assert vals[0]["step"] == 0 and set(vals[0]) >= {"reward", "regret"}
    assert vals[-1]["reward"] > vals[0]["reward"] + 0.5 and vals[-1]["regret"] < 0.3 * vals[0]["regret"]
    train = [r for r in rows(tmp_path / "r") if r["split"] == "train"]
    assert all("baseline" in r for r in train) and train[-1]["baseline"] > train[0]["baseline"]
    assert s["best"]["metric"] == "reward" and s["metrics"]["val"]["reward"] == s["best"]["value"]


def test_the_bandit_resumes_exactly(tmp_path, monkeypatch):
    cfg = recipe(steps=30, eval_every=10)
    loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 10, monkeypatch)
    loop.train(cfg, tmp_path / "cut", resume=True)

    def comparable(d):
        return [{k: v for k, v in r.items() if k not in ("time", "throughput")} for r in rows(d)]

    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")
