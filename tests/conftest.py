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
