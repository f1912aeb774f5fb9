"""Exact resume: a run killed with SIGKILL after a checkpoint, then resumed, ends where the uninterrupted run does."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, train_sigkilled

# digits-cnn with augmentation and dropout: every source of randomness must be restored for an exact match.
ARGS = ["digits-cnn", "loop.max_steps=80", "loop.eval_every=10", "loop.log_every=10", "run.seed=5"]


def comparable(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "throughput")} for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_cli("train", *ARGS, "--run-dir", str(full))
    assert r.returncode == 0, r.stderr

    train_sigkilled(ARGS, killed)
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"

    r = run_cli("train", *ARGS, "--run-dir", str(killed), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stdout

    a, b = load_file(full / "model/model.safetensors"), load_file(killed / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(full) == comparable(killed)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    assert sa["metrics"]["val"] == sb["metrics"]["val"] and sa["best"] == sb["best"] and sb["status"] == "completed"


def test_resume_with_a_different_recipe_is_refused(tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", "digits-mlp", "loop.max_steps=4", "--run-dir", str(run)).returncode == 0
    r = run_cli("train", "digits-mlp", "loop.max_steps=4", "optim.lr=0.5", "--run-dir", str(run), "--resume")
    assert r.returncode == 2 and "optim.lr" in r.stderr


def test_resume_from_a_corrupt_checkpoint_fails_cleanly_and_keeps_it(tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", "digits-mlp", "loop.max_steps=4", "--run-dir", str(run)).returncode == 0
    state = run / "checkpoints" / "last" / "state.pt"
    state.write_bytes(b"\x00garbage")
    r = run_cli("train", "digits-mlp", "loop.max_steps=4", "--run-dir", str(run), "--resume")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "state.pt is damaged" in r.stderr and "Traceback" not in r.stderr
    assert state.read_bytes() == b"\x00garbage"  # nothing was overwritten
