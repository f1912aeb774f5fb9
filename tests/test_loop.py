import json
import math

import pytest
import torch

from trainlab import checkpoint, loop, models
from trainlab.errors import UserError
from tests.conftest import tiny


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["digits-mlp", "digits-cnn", "breast-cancer-mlp", "diabetes-mlp"])
def test_loop_lowers_the_loss_for_each_objective(tmp_path, recipe):
    s = loop.train(tiny(recipe, "loop.max_steps=30", "loop.eval_every=10"), tmp_path / "run")
    rows = metrics_rows(tmp_path / "run")
    val = [r for r in rows if r["split"] == "val"]
    assert val[0]["step"] == 0 and val[-1]["step"] == 30
    assert min(r["loss"] for r in val[1:]) < val[0]["loss"]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 30 and all("grad_norm" in r and "lr" in r for r in train)  # logged every step
    assert s["status"] == "completed" and s["steps"] == 30
    assert set(s) >= {"status", "recipe", "steps", "wall_s", "metrics", "best"}
    assert set(s["metrics"]) == {"train", "val"}


def test_run_folder_contract(tmp_path):
    run = tmp_path / "run"
    loop.train(tiny(), run)
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model/model.safetensors", "model/config.json",
                 "checkpoints/last/model.safetensors", "checkpoints/best/state.pt"):
        assert (run / name).is_file(), name
    text = (run / "config.toml").read_text()
    assert "steps = 12" in text and "eval_every = 4" in text  # derived values written once
    model, info = models.load(run / "model")
    assert info["num_classes"] == 10 and not model.training


def test_same_seed_same_numbers_twice(tmp_path):
    a = loop.train(tiny("digits-cnn"), tmp_path / "a")
    b = loop.train(tiny("digits-cnn"), tmp_path / "b")
    assert a["metrics"]["val"] == b["metrics"]["val"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "throughput")} for r in rows]  # noqa
    assert strip(metrics_rows(tmp_path / "a")) == strip(metrics_rows(tmp_path / "b"))
    c = loop.train(tiny("digits-cnn", "run.seed=1"), tmp_path / "c")
    assert c["metrics"]["val"] != a["metrics"]["val"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # Without batch-dependent layers (no BatchNorm, no dropout), 2 micro-batches of 32 give the same
    # update as one batch of 64 drawn in the same order.
    common = ["model.norm=none", "model.dropout=0.0", "loop.max_steps=6", "loop.clip_grad_norm=0.5",
              "loop.restore_best=false"]
    loop.train(tiny("digits-mlp", *common, "data.batch_size=64"), tmp_path / "big")
    loop.train(tiny("digits-mlp", *common, "data.batch_size=32", "loop.grad_accum=2"), tmp_path / "acc")
    big = [r for r in metrics_rows(tmp_path / "big") if r["split"] == "train"]
    acc = [r for r in metrics_rows(tmp_path / "acc") if r["split"] == "train"]
    # Both streams draw the same permutation: batch k of 64 is micro-batches 2k and 2k+1 of 32.
    assert len(big) == len(acc) == 6
    for a, b in zip(big, acc):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "big/model/model.safetensors"), load_file(tmp_path / "acc/model/model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_gradient_clipping_caps_the_update_and_logs_the_raw_norm(tmp_path):
    loop.train(tiny("digits-mlp", "loop.clip_grad_norm=1e-3", "optim.name=sgd", "optim.momentum=0"), tmp_path / "r")
    norms = [r["grad_norm"] for r in metrics_rows(tmp_path / "r") if r["split"] == "train"]
    assert min(norms) > 1e-3  # the logged norm is the one before clipping


def test_early_stopping_restores_the_best_weights(tmp_path):
    # A learning rate far too high makes validation loss stop improving; patience 2 stops the run.
    s = loop.train(tiny("digits-mlp", "loop.max_steps=200", "loop.eval_every=5", "loop.patience=2",
                        "optim.lr=0.5", "schedule.name=constant"), tmp_path / "r")
    assert s["status"] == "early_stopped" and s["steps"] < 200
    assert s["metrics"]["val"][s["best"]["metric"]] == pytest.approx(s["best"]["value"])
    run = tmp_path / "r"
    # The exported model is the best checkpoint's weights.
    from safetensors.torch import load_file

    best = load_file(run / "checkpoints/best/model.safetensors")
    exported = load_file(run / "model/model.safetensors")
    assert all(torch.equal(best[k], exported[k]) for k in best)


def test_monitor_must_be_a_validation_metric(tmp_path):
    with pytest.raises(UserError, match="loop.monitor = 'f1'"):
        loop.train(tiny("digits-mlp", "loop.monitor=f1"), tmp_path / "r")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "r"
    cfg = tiny("diabetes-mlp", "loop.max_steps=400", "loop.eval_every=2", "loop.clip_grad_norm=0",
               "optim.name=sgd", "optim.lr=5.0", "optim.momentum=0.99", "schedule.name=constant",
               "model.dropout=0", "loop.patience=0")
    with pytest.raises(UserError) as e:
        loop.train(cfg, run)
    assert "became" in e.value.message and "at step" in e.value.message
    assert "last good checkpoint" in e.value.message
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    model = models.build(cfg.model, {"task": "regression", "input_shape": [10], "num_classes": 0})
    state = checkpoint.load(run / "checkpoints" / "last", model)  # intact and loadable
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state["step"] < summary["steps"] + 1


def test_bf16_autocast_on_cpu_when_asked(tmp_path):
    s = loop.train(tiny("digits-mlp", "loop.precision=bf16"), tmp_path / "r")
    assert math.isfinite(s["metrics"]["val"]["loss"])
