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


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, process: bool = False) \
        -> subprocess.CompletedProcess:
    """`trainlab ARGS` as a user runs it: its exit status, stdout and stderr. By default through
    `trainlab.cli.main` in this process (what the console script calls; a new process would spend seconds
    importing torch for every call); `process=True` for what needs a process of its own (locks, signals)."""
    if process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from trainlab import cli

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:  # --debug re-raises: show what the console script would print
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["trainlab", *args], code, out.getvalue(), err.getvalue())


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


def train_sigkilled(args: list[str], run_dir: Path, timeout: float = 120) -> None:
    """`trainlab train ARGS --run-dir RUN_DIR` in a process of its own, killed with SIGKILL as soon as its first
    checkpoint (checkpoints/last) exists: a machine lost at whatever point the run had reached."""
    import signal
    import time

    # The environment as it is (threads included): the killed run must compute exactly what the run it is
    # compared with computes in this process.
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *map(str, args), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.time() + timeout
        while not (run_dir / "checkpoints" / "last").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
