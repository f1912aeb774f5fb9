"""The bundled reinforcement-learning recipes, each trained once and evaluated on its test episodes.

    python benchmarks/rl_recipes.py                     # cartpole-ppo, cartpole-dqn, acrobot-ppo, pendulum-ppo
    python benchmarks/rl_recipes.py cartpole-ppo        # some of them

Each recipe runs through `trainlab train` (seed 0, one process, OMP_NUM_THREADS=1 so the number does not depend
on the machine's cores), then `trainlab eval --split test` (the recipe's deterministic episodes beside a uniformly
random policy on the same seeds) and `trainlab report` (return against environment steps, a recorded episode).
Writes docs/benchmarks/rl_recipes.{md,json,png}; the run folders stay in benchmarks/results/rl_recipes/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["cartpole-ppo", "cartpole-dqn", "acrobot-ppo", "pendulum-ppo"]


def main() -> None:
    names = sys.argv[1:] or RECIPES
    out = ROOT / "benchmarks" / "results" / "rl_recipes"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    docs = ROOT / "docs" / "benchmarks"
    old = docs / "rl_recipes.json"
    results = json.loads(old.read_text()) if old.is_file() else {}
    for name in names:
        run = out / name
        cmd = [sys.executable, "-m", "trainlab", "train", name, "--run-dir", str(run), "loop.threads=1"]
        subprocess.run(["rm", "-rf", str(run)], check=True)
        t = time.time()
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.time() - t
        ev = json.loads(subprocess.run([sys.executable, "-m", "trainlab", "eval", str(run), "--split", "test",
                                        "--json"], env=env, check=True, cwd=ROOT, capture_output=True,
                                       text=True).stdout)
        subprocess.run([sys.executable, "-m", "trainlab", "report", str(run)], env=env, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curve = [(r["step"], r["episode_return"]) for r in rows if r["split"] == "val"]
        steps = {r["step"]: r.get("env_steps") for r in rows if r["split"] == "train"}
        results[name] = {"wall_s": wall, "steps": summary["steps"], "test": ev["metrics"], "random": ev["baseline"],
                         "env": ev["env"], "env_steps": max((v for v in steps.values() if v), default=0),
                         "curve": [(steps.get(s, 0) or 0, v) for s, v in curve]}
        print(f"{name}: test return {ev['metrics']['episode_return']:.1f} +- {ev['metrics']['return_std']:.1f} "
              f"(random {ev['baseline']['episode_return']:.1f}) in {wall:.0f} s", flush=True)
    old.write_text(json.dumps(results, indent=1))
    plot(results, docs / "rl_recipes.png")
    (docs / "rl_recipes.md").write_text(markdown(results))
    print(markdown(results))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(xs, ys, "o-", ms=3)
        ax.axhline(r["random"]["episode_return"], color="gray", ls="--", lw=1, label="random policy")
        ax.set_title(f"{name} ({r['env']})", fontsize=9)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("deterministic evaluation return")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = ["| recipe | environment | env steps | test return (mean ± std) | random policy | time |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        t, b = r["test"], r["random"]
        lines.append(f"| {name} | {r['env']} | {r['env_steps']:,.0f} | {t['episode_return']:.1f} ± {t['return_std']:.1f}"
                     f" | {b['episode_return']:.1f} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
