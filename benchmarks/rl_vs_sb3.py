"""PPO on CartPole-v1: trainlab against Stable-Baselines3 with the same hyper-parameters, on the same machine.

    python benchmarks/rl_vs_sb3.py                 # 3 seeds each, one thread per run, ~5 minutes on a CPU
    python benchmarks/rl_vs_sb3.py --seeds 0 --no-profile

The RL-Zoo hyper-parameters for CartPole-v1 (8 environments x 32 steps, batch 256, 20 epochs, GAE lambda 0.8,
gamma 0.98, lr 1e-3 decayed linearly, clip 0.2, entropy 0, MLP 64-64 tanh, gradient norm 0.5; RL-Zoo also decays
the clip range, both keep it constant here). Every 2,048 environment steps both are evaluated by the same code
(`trainlab.rl.rollouts.EnvSource.episodes`: 10 deterministic episodes on the same seeds; SB3 acts through
`model.predict(obs, deterministic=True)`), and a run stops once the mean return reaches 475 (at most 1e5 steps).

Measured per run: environment steps and wall time until 475, the wall time without the evaluations (what the
ratio uses: training speed), and the whole wall time. The runs go one after the other (trainlab, SB3, next seed),
each in its own process with OMP_NUM_THREADS=1. `--profile` then runs each for 20,480 steps under cProfile and
says where the time goes. Results: benchmarks/results/rl_vs_sb3/, docs/benchmarks/rl_vs_sb3.{md,json,png}.
The last line is `ratio: X.XX` (SB3's median training wall time to 475 / trainlab's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL_EVERY, TARGET, MAX_STEPS = 2048, 475.0, 100_000


def worker_trainlab(seed: int, profile: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    from trainlab import config, loop
    from trainlab.rl import rollouts

    curve, spent = [], [0.0]
    real = rollouts.EnvSource.validate

    def timed(self, policy, limit=0):
        t = time.perf_counter()
        out = real(self, policy, limit)
        spent[0] += time.perf_counter() - t
        curve.append({"env_steps": len(curve) * EVAL_EVERY, "return": out["episode_return"],
                      "wall_s": time.perf_counter() - t0, "train_s": time.perf_counter() - t0 - spent[0]})
        return out

    steps_per_eval = EVAL_EVERY // 256 * 20  # 8 rollouts of 256 transitions, 20 minibatch steps each
    overrides = [f"run.seed={seed}", f"loop.eval_every={steps_per_eval}", "data.eval_episodes=10", "loop.threads=1",
                 f"loop.log_every={steps_per_eval}", "run.tensorboard=false", f"data.env_steps={MAX_STEPS}"]
    if profile:
        overrides += ["data.env_steps=20480", f"loop.eval_every={10**6}"]
    else:
        overrides += [f"loop.target={TARGET}"]
        rollouts.EnvSource.validate = timed
    cfg = config.load_recipe("cartpole-ppo", overrides)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        loop.train(cfg, Path(d) / "run")
    return {"curve": curve}


def worker_sb3(seed: int, profile: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from trainlab import config
    from trainlab.rl import rollouts

    t0 = time.perf_counter()
    evaluator = rollouts.GymRollouts(config.load_recipe("cartpole-ppo", ["data.eval_episodes=10"]).data)
    curve, spent = [], [0.0]

    class Evaluate(BaseCallback):
        def _evaluate(self) -> bool:
            t = time.perf_counter()
            returns, _ = evaluator.episodes(lambda obs: self.model.predict(obs, deterministic=True)[0], "val", 10)
            spent[0] += time.perf_counter() - t
            mean = sum(returns) / len(returns)
            curve.append({"env_steps": self.num_timesteps, "return": mean, "wall_s": time.perf_counter() - t0,
                          "train_s": time.perf_counter() - t0 - spent[0]})
            return mean < TARGET

        def _on_training_start(self) -> None:
            self._evaluate()

        def _on_step(self) -> bool:
            return self._evaluate() if self.num_timesteps % EVAL_EVERY == 0 else True

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gae_lambda=0.8, gamma=0.98, ent_coef=0.0,
                learning_rate=lambda progress: 1e-3 * progress, clip_range=0.2, max_grad_norm=0.5, seed=seed,
                device="cpu", verbose=0)
    model.learn(total_timesteps=20480 if profile else MAX_STEPS, callback=None if profile else Evaluate())
    return {"curve": curve}


def summarize_run(curve: list[dict]) -> dict:
    """Steps and time to the target; start-up (to the first evaluation, before any step) and the training time
    per 2,048 environment steps after it (collection and updates: the speed, apart from sample efficiency)."""
    hit = next((c for c in curve if c["return"] >= TARGET), None)
    last = hit or (curve[-1] if curve else None)
    blocks = (last["env_steps"] - curve[0]["env_steps"]) / EVAL_EVERY if last else 0
    return {"reached": hit is not None, "env_steps": hit["env_steps"] if hit else None,
            "wall_s": hit["wall_s"] if hit else None, "train_s": hit["train_s"] if hit else None,
            "startup_s": curve[0]["train_s"] if curve else None,
            "s_per_2048": (last["train_s"] - curve[0]["train_s"]) / blocks if blocks else None,
            "final_return": curve[-1]["return"] if curve else None}


def run_worker(which: str, seed: int, profile: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", which, "--seed", str(seed), "--out", out.name]
        if profile:
            cmd.append("--profile-worker")
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        return json.loads(Path(out.name).read_text())


def profile_summary(stats_file: str, which: str) -> dict:
    """Where the time goes: cumulative time of the phases, and own time by library."""
    import pstats

    st = pstats.Stats(stats_file)
    total = max(v[3] for v in st.stats.values())
    phases = {}
    names = {"trainlab": {"collect": ("rollouts.py", "collect"), "next_step": ("rollouts.py", "next_step"),
                          "train loop (forward, backward, step)": ("loop.py", "train")},
             "sb3": {"collect_rollouts": ("on_policy_algorithm.py", "collect_rollouts"),
                     "train": ("ppo.py", "train")}}[which]
    for label, (file, func) in names.items():
        phases[label] = sum(v[3] for (f, _, fn), v in st.stats.items() if f.endswith(file) and fn == func)
    own: dict[str, float] = {}
    for (f, _, fn), v in st.stats.items():
        lib = ("stable_baselines3" if "stable_baselines3" in f else "trainlab" if "/trainlab/" in f else
               "torch (python)" if "/torch/" in f else "gymnasium" if "gymnasium" in f else
               "numpy" if "numpy" in f else "torch (C++ ops)" if f == "~" and "torch" in fn else
               "builtins" if f == "~" else "other")
        own[lib] = own.get(lib, 0.0) + v[2]
    top = sorted(((v[2], f"{Path(f).name}:{fn}") for (f, _, fn), v in st.stats.items()), reverse=True)[:12]
    return {"total_s": total, "phases_s": phases, "own_s_by_library": dict(sorted(own.items(), key=lambda x: -x[1])),
            "top_own": [{"function": n, "s": t} for t, n in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--worker", choices=["trainlab", "sb3"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--profile-worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        fn = worker_trainlab if args.worker == "trainlab" else worker_sb3
        if args.profile_worker:
            import cProfile

            prof = cProfile.Profile()
            t = time.perf_counter()
            prof.runcall(fn, args.seed, True)
            wall = time.perf_counter() - t
            prof.dump_stats(args.out + ".prof")
            result = {"wall_s": wall, **profile_summary(args.out + ".prof", args.worker)}
        else:
            result = fn(args.seed, False)
        Path(args.out).write_text(json.dumps(result))
        return

    import torch
    import stable_baselines3

    results = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "sb3": stable_baselines3.__version__},
               "runs": {"trainlab": {}, "sb3": {}}}
    for seed in args.seeds:
        for which in ("trainlab", "sb3"):
            t = time.time()
            r = run_worker(which, seed)
            results["runs"][which][seed] = {**summarize_run(r["curve"]), "curve": r["curve"]}
            s = results["runs"][which][seed]
            print(f"{which:9s} seed {seed}: reached {TARGET:.0f}: {s['reached']} at {s['env_steps']} env steps, "
                  f"{s['train_s'] or float('nan'):.1f} s training ({s['wall_s'] or float('nan'):.1f} s with evaluations)"
                  f" [{time.time() - t:.0f} s]", flush=True)
    if not args.no_profile:
        results["profile"] = {w: run_worker(w, 0, profile=True) for w in ("trainlab", "sb3")}
    table = {}
    for which in ("trainlab", "sb3"):
        runs = list(results["runs"][which].values())
        ok = [r for r in runs if r["reached"]]
        table[which] = {"reached": f"{len(ok)}/{len(runs)}",
                        "env_steps": statistics.median(r["env_steps"] for r in ok) if ok else None,
                        "train_s": statistics.median(r["train_s"] for r in ok) if ok else None,
                        "wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                        "startup_s": statistics.median(r["startup_s"] for r in runs),
                        "s_per_2048": statistics.median(r["s_per_2048"] for r in runs if r["s_per_2048"])}
    results["medians"] = table
    ratio = (table["sb3"]["train_s"] / table["trainlab"]["train_s"]
             if table["sb3"]["train_s"] and table["trainlab"]["train_s"] else float("nan"))
    results["ratio"] = ratio
    out_dir = ROOT / "benchmarks" / "results" / "rl_vs_sb3"
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = ROOT / "docs" / "benchmarks"
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (docs / "rl_vs_sb3.json").write_text(json.dumps(results, indent=1))
    plot(results, docs / "rl_vs_sb3.png")
    (docs / "rl_vs_sb3.md").write_text(markdown(results))
    print(markdown(results))
    print(f"ratio: {ratio:.2f}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for which, color in (("trainlab", "tab:blue"), ("sb3", "tab:red")):
        for i, (seed, r) in enumerate(results["runs"][which].items()):
            xs = [c["env_steps"] for c in r["curve"]]
            ys = [c["return"] for c in r["curve"]]
            ax.plot(xs, ys, "o-", ms=3, color=color, alpha=0.7, label=("trainlab" if which == "trainlab" else
                                                                    "Stable-Baselines3") if i == 0 else None)
    ax.axhline(TARGET, color="gray", ls="--", lw=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("deterministic evaluation return (10 episodes)")
    ax.set_title("PPO on CartPole-v1, RL-Zoo hyper-parameters, one thread")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    m = results["medians"]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    lines = ["| | reached 475 | env steps (median) | training s to 475 (median) | with evaluations s | start-up s "
             "| s per 2,048 env steps |", "|---|---|---|---|---|---|---|"]
    for which, name in (("trainlab", "trainlab"), ("sb3", "Stable-Baselines3")):
        lines.append(f"| {name} | {m[which]['reached']} | {f(m[which]['env_steps'], ',.0f')} | "
                     f"{f(m[which]['train_s'], '.1f')} | {f(m[which]['wall_s'], '.1f')} | "
                     f"{f(m[which]['startup_s'], '.1f')} | {f(m[which]['s_per_2048'], '.2f')} |")
    lines += ["", "Per seed (env steps, training s):", ""]
    for which in ("trainlab", "sb3"):
        lines.append(f"- {which}: " + "; ".join(
            f"seed {s}: {r['env_steps']}, {f(r['train_s'], '.1f')}" for s, r in results["runs"][which].items()))
    if "profile" in results:
        lines += ["", "Profile (20,480 environment steps, no evaluation, cProfile):", ""]
        for which, p in results["profile"].items():
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in p["phases_s"].items())
            own = ", ".join(f"{k} {v:.1f} s" for k, v in list(p["own_s_by_library"].items())[:6])
            lines.append(f"- {which}: {p['wall_s']:.1f} s under the profiler; {phases}; own time by library: {own}")
    speed = m["sb3"]["s_per_2048"] / m["trainlab"]["s_per_2048"]
    lines += ["", f"ratio (SB3 / trainlab training time to 475): {results['ratio']:.2f}; per environment step after "
              f"start-up: {speed:.2f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
