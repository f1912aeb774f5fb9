import math

import pytest
import torch
from torch import nn

from trainlab.config import OptimConfig, ScheduleConfig
from trainlab.optim import build_optimizer, lr_factor, param_groups


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4  # two biases, the norm's weight and bias


def test_adamw_groups_match_torch_adamw_applied_by_hand():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    b = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    b.load_state_dict(a.state_dict())
    ours = build_optimizer(OptimConfig(lr=0.1, weight_decay=0.5), a)
    ref = torch.optim.AdamW([{"params": [b[0].weight, b[1].weight], "weight_decay": 0.5},
                             {"params": [b[0].bias, b[1].bias], "weight_decay": 0.0}], lr=0.1)
    x = torch.randn(16, 3)
    for _ in range(5):
        for m, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_sgd_with_momentum():
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True), nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]


def test_warmup_then_cosine_to_min_ratio():
    s = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, s) == pytest.approx(0.1)
    assert lr_factor(9, 110, s) == pytest.approx(1.0)
    assert lr_factor(10, 110, s) == pytest.approx(1.0)
    assert lr_factor(60, 110, s) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(110, 110, s) == pytest.approx(0.1)


def test_linear_decay_and_constant():
    assert lr_factor(50, 100, ScheduleConfig(name="linear")) == pytest.approx(0.5)
    assert lr_factor(99, 100, ScheduleConfig(name="constant")) == 1.0
    factors = [lr_factor(i, 100, ScheduleConfig(name="cosine")) for i in range(100)]
    assert all(x >= y for x, y in zip(factors, factors[1:])) and math.isclose(factors[0], 1.0)
