import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab import config

REPO = Path(__file__).resolve().parent.parent


def tiny(recipe: str = "digits-mlp", *overrides: str) -> config.Config:
    """A bundled recipe shrunk to seconds: few steps, checkpoints at every evaluation."""
    return config.load_recipe(recipe, ["loop.max_steps=12", "loop.eval_every=4", "loop.log_every=4", *overrides])


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def tiny_cfg():
    return tiny


class Killed(Exception):
    """Stands for a kill right after a checkpoint was committed."""


def train_killed_after(cfg, run_dir, step: int, monkeypatch) -> None:
    """Train `cfg` into `run_dir` and stop it right after the checkpoint of `step` is committed."""
    from trainlab import checkpoint, loop

    real = checkpoint.commit

    def commit_then_die(root, tmp, at, links):
        out = real(root, tmp, at, links)
        if at == step:
            raise Killed()
        return out

    monkeypatch.setattr(checkpoint, "commit", commit_then_die)
    with pytest.raises(Killed):
        loop.train(cfg, run_dir)
    monkeypatch.setattr(checkpoint, "commit", real)
