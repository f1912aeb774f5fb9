"""Pinned loss curves of tiny runs: any change to initialization, data order, augmentation, the schedule or the
update shows up here. If a change is meant to move them, re-pin with the numbers printed by the failure."""

import json

import pytest

from trainlab import loop
from tests.conftest import tiny

GOLDEN = {
    "digits-mlp": [2.29446, 2.294473, 2.280327, 2.293385, 2.288065, 2.266257],
    "digits-cnn": [2.296847, 2.300721, 2.290448, 2.288764, 2.290467, 2.289887],
}


@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_loss_curve_matches_golden_values(tmp_path, recipe):
    loop.train(tiny(recipe, "loop.max_steps=6", "loop.eval_every=0"), tmp_path / "r")
    rows = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    losses = [round(r["loss"], 6) for r in rows if r["split"] == "train"]
    assert losses == pytest.approx(GOLDEN[recipe], rel=2e-5, abs=2e-6), losses
