"""Post-training at laptop scale: does alignment beat supervised fine-tuning, and a 4x larger model?

    python benchmarks/post_training.py                  # 3 seeds, about an hour on 2 CPU cores
    python benchmarks/post_training.py --seeds 0 --quick

Every stage is a bundled recipe run through `trainlab train`, chained by model.init_from:

    stdlib-gpt (pre-training, shared) -> tasks-sft -> tasks-rm
                                                   -> tasks-dpo, tasks-ppo (rewarded by tasks-rm), tasks-grpo,
                                                      and tasks-ppo on GRPO's verifiable reward instead

and, for the InstructGPT comparison, stdlib-gpt at about 4x the parameters (6 layers, width 256) with its own
tasks-sft. Measured on the suite's held-out test prompts (greedy replies):

    exact match       `trainlab eval RUN --split test` (base: the pre-trained model prompted through the template)
    win rate vs SFT   the reward model (tasks-rm of the same seed) scores each method's reply and the SFT
                      model's to the same prompt; a win counts 1, a tie 1/2. PPO is trained on that very reward
                      model, so its win rate is partly the judge's bias (Goodhart): read it beside exact match.

Also: GRPO's generation speed and the share of its step spent generating (from its metrics), and the
over-optimization frontier: PPO at several kl_coef, logging the reward model's score (the proxy it optimizes)
and the exact-match reward (the gold standard, weight 0) against the KL to the reference on each round.
Results go to benchmarks/results/post_training/ (results.json, post_training.md, reward_kl.png, rewards.png).
The last line is `grpo_minus_sft: X.X` (test exact-match points, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sft", "dpo", "ppo", "ppo_exact", "grpo")
NAMES = {"base": "base (pre-trained only)", "sft": "SFT", "dpo": "SFT + DPO", "ppo": "SFT + PPO (reward model: RLHF)",
         "ppo_exact": "SFT + PPO (verifiable reward)", "grpo": "SFT + GRPO (verifiable reward)"}
LARGE = ["model.n_layer=6", "model.n_embd=256", "model.n_head=4"]


def trainlab(*args: str, log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "trainlab", *args]
    t = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if log is not None:
        log.write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stderr[-2000:]}")
    print(f"  {time.time() - t:6.0f} s  trainlab {' '.join(a for a in args if not a.startswith('--run-dir'))}",
          flush=True)


def train(recipe: str, run: Path, *overrides: str) -> Path:
    if (run / "summary.json").is_file() and json.loads((run / "summary.json").read_text())["status"] == "completed":
        return run  # done by an earlier, interrupted benchmark run
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    trainlab("train", recipe, *overrides, "--run-dir", str(run), log=run.parent / f"{run.name}.log")
    return run


def exact_match(run: Path) -> dict:
    trainlab("eval", str(run), "--split", "test", "--json")
    return json.loads((run / "eval_test.json").read_text())["metrics"]


def replies(run: Path, prompts) -> list[list[int]]:
    """Greedy reply tokens (ending in <|end|> when the model ended) of a run's model to the prompts."""
    import trainlab as tl
    from trainlab.data import chat
    from trainlab.data.dialogues import greedy_replies
    from trainlab.data import tokenizer as tok_lib
    from trainlab.generate import generate

    model = tl.load(run).model
    tpl = chat.ChatTemplate(tok_lib.load(run / "model" / "tokenizer.json"))
    out = greedy_replies(lambda ids, **k: generate(model, ids, **k), tpl, prompts, 24)
    return [tpl.completion_ids(text) for text, _ in out], [text for text, _ in out]


def base_exact(run: Path, data) -> float:
    from trainlab.data import tasks

    _, texts = replies(run, [p for p, _ in data.answers["test"]])
    return sum(tasks.correct(r["answer"], t) for (_, r), t in zip(data.answers["test"], texts)) / len(texts)


def win_rates(rm_run: Path, runs: dict[str, Path], data) -> dict[str, float]:
    """Each run's win rate against runs["sft"], judged by the reward model on the test prompts."""
    import torch

    import trainlab as tl
    from trainlab.data.dialogues import pad_rows

    prompts = [p for p, _ in data.answers["test"]]
    rm = tl.load(rm_run).model
    scores = {}
    for name, run in runs.items():
        ids, _ = replies(run, prompts)
        seqs = [data.template.prompt_ids(p) + r for p, r in zip(prompts, ids)]
        idx = pad_rows([s[:data.cfg.block_size] for s in seqs], max(len(s) for s in seqs), data.tokenizer.pad_id)
        with torch.no_grad():
            scores[name] = rm(idx).float()
    return {n: float(((s > scores["sft"]).float() + 0.5 * (s == scores["sft"]).float()).mean())
            for n, s in scores.items() if n != "sft"}


def last(run: Path, key: str) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r["split"] == "train" and key in r][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a fraction of every run's steps (a smoke test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/post_training"))
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plots from results.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        print(report(results, out))
        print(f"grpo_minus_sft: {100 * (_mean(results, 'grpo') - _mean(results, 'sft')):.1f}")
        return
    out.mkdir(parents=True, exist_ok=True)
    q = ["loop.max_steps=20", "data.suite_eval=60", "data.eval_prompts=30"] if args.quick else []
    started = time.time()

    print("pre-training (shared by every seed): stdlib-gpt and a 4x larger stdlib-gpt", flush=True)
    base = train("stdlib-gpt", out / "base", *(["loop.max_steps=50"] if args.quick else []))
    large = train("stdlib-gpt", out / "base-large", *LARGE, *(["loop.max_steps=50"] if args.quick else []))

    from trainlab import config, data as data_lib

    results: dict = {"seeds": {}, "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d")}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        d = out / f"seed{seed}"
        s = [f"run.seed={seed}", *q]
        runs = {"sft": train("tasks-sft", d / "sft", f"model.init_from={base}", *s)}
        rm = train("tasks-rm", d / "rm", f"model.init_from={runs['sft']}", *s)
        runs["dpo"] = train("tasks-dpo", d / "dpo", f"model.init_from={runs['sft']}", *s)
        runs["ppo"] = train("tasks-ppo", d / "ppo", f"model.init_from={runs['sft']}", f"data.reward_model={rm}",
                            'data.rewards=["exact"]', "data.reward_weights=[0.0]", *s)
        # The same PPO on the reward GRPO gets: is it the algorithm or the reward model?
        runs["ppo_exact"] = train("tasks-ppo", d / "ppo_exact", f"model.init_from={runs['sft']}", 'data.reward_model=""',
                                  'data.rewards=["suite"]', *s)
        runs["grpo"] = train("tasks-grpo", d / "grpo", f"model.init_from={runs['sft']}", *s)
        data = data_lib.build(config.load_resolved(runs["sft"] / "config.toml").data)
        r = {name: exact_match(run) for name, run in runs.items()}
        r["base"] = {"exact_match": base_exact(base, data)}
        r["win_rate_vs_sft"] = win_rates(rm, runs, data)
        r["rm_accuracy"] = json.loads((rm / "summary.json").read_text())["metrics"]["val"]["accuracy"]
        r["grpo_gen_tokens_per_s"] = last(runs["grpo"], "gen_tokens_per_s")
        r["grpo_gen_share"] = last(runs["grpo"], "gen_share")
        r["wall_s"] = {n: json.loads((run / "summary.json").read_text())["wall_s"] for n, run in runs.items()}
        results["seeds"][seed] = r
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print("the 4x larger model, supervised only (seed 0)", flush=True)
    large_sft = train("tasks-sft", out / "large-sft", f"model.init_from={large}", *q)
    results["large_sft"] = exact_match(large_sft)
    import trainlab as tl

    results["parameters"] = {name: sum(p.numel() for p in tl.load(run).model.parameters())
                             for name, run in (("small", base), ("large", large))}

    print("over-optimization: PPO at several kl_coef (seed 0)", flush=True)
    d0 = out / f"seed{args.seeds[0]}"
    frontier = {}
    for coef in (0.0, 0.2):
        run = train("tasks-ppo", out / f"ppo-kl{coef}", f"model.init_from={d0 / 'sft'}",
                    f"data.reward_model={d0 / 'rm'}", 'data.rewards=["exact"]', "data.reward_weights=[0.0]",
                    f"objective.kl_coef={coef}", f"run.seed={args.seeds[0]}", *q)
        frontier[coef] = run
    frontier[0.05] = d0 / "ppo"
    results["frontier"] = {str(c): _curve(run) for c, run in sorted(frontier.items())}
    results["wall_s"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = report(results, out)
    print(table)
    mean = _mean(results, "grpo") - _mean(results, "sft")
    print(f"grpo_minus_sft: {100 * mean:.1f}")


def _curve(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    return {k: [r.get(k) for r in train_rows] for k in ("step", "kl", "reward_model", "reward_exact", "reward")}


def _rounds(c: dict) -> tuple[list, list, list]:
    """One point per round of generation (the steps of a round log the same round statistics)."""
    out, last = [], None
    for kl, proxy, gold in zip(c["kl"], c["reward_model"], c["reward_exact"]):
        if (kl, proxy, gold) != last:
            out.append((kl, proxy, gold))
            last = (kl, proxy, gold)
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def _smooth(values: list[float], k: int = 5) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def _mean(results: dict, method: str) -> float:
    vals = [r[method]["exact_match"] for r in results["seeds"].values()]
    return sum(vals) / len(vals)


def _std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def report(results: dict, out: Path) -> str:
    seeds = results["seeds"]
    lines = [f"Post-training on the task suite, {len(seeds)} seed(s), {results['machine']}, {results['date']}",
             "", "| model | test exact match | win rate vs SFT (RM-judged) |", "|---|---|---|"]
    for m in ("base", *METHODS):
        ex = [100 * r[m]["exact_match"] for r in seeds.values()]
        wins = [100 * r["win_rate_vs_sft"][m] for r in seeds.values() if m in r["win_rate_vs_sft"]]
        lines.append(f"| {NAMES[m]} | {sum(ex) / len(ex):.1f} ± {_std(ex):.1f} | "
                     + (f"{sum(wins) / len(wins):.1f} ± {_std(wins):.1f} |" if wins else "- |"))
    p = results["parameters"]
    lines.append(f"| SFT, {p['large'] / p['small']:.1f}x the parameters ({p['large']:,} vs {p['small']:,}), "
                 f"seed 0 | {100 * results['large_sft']['exact_match']:.1f} | - |")
    per_task = {m: {t: sum(r[m]["per_task"][t] for r in seeds.values()) / len(seeds)
                    for t in next(iter(seeds.values()))[m]["per_task"]} for m in METHODS}
    tasks = list(per_task["sft"])
    lines += ["", "| per task (exact match) | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join(f"{100 * per_task[m][t]:.0f}" for t in tasks) + " |")
    gen = [r["grpo_gen_tokens_per_s"] for r in seeds.values()]
    share = [r["grpo_gen_share"] for r in seeds.values()]
    lines += ["", f"reward-model accuracy on held-out pairs: "
              f"{100 * sum(r['rm_accuracy'] for r in seeds.values()) / len(seeds):.1f}%",
              f"GRPO generation: {sum(gen) / len(gen):,.0f} tokens/s; generating is {100 * sum(share) / len(share):.0f}% "
              f"of a step (step time = {len(share) / sum(share):.2f}x the generation time)",
              f"benchmark wall time: {results['wall_s'] / 60:.0f} min"]
    table = "\n".join(lines)
    (out / "post_training.md").write_text(table + "\n")
    _plots(results, out)
    return table


def _plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (coef, c), color in zip(sorted(results["frontier"].items(), key=lambda kv: float(kv[0])),
                                ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        kl, proxy, gold = _rounds(c)
        axes[0].plot(kl, proxy, "o", ms=2, alpha=0.25, color=color)
        axes[0].plot(_smooth(kl), _smooth(proxy), "-", color=color, label=f"kl_coef {coef}")
        axes[1].plot(kl, gold, "o", ms=2, alpha=0.25, color=color)
        axes[1].plot(_smooth(kl), _smooth(gold), "-", color=color, label=f"kl_coef {coef}")
    axes[0].set(xlabel="KL(policy || reference) per reply, nats", ylabel="reward-model score (proxy)",
                title="what PPO optimizes: the reward model")
    axes[1].set(xlabel="KL(policy || reference) per reply, nats", ylabel="exact answers among sampled replies (gold)",
                title="what we want: right answers")
    for a in axes:
        a.legend(fontsize=7, title="rounds in training order; lines: mean of 5", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reward_kl.png", dpi=120)
    plt.close(fig)
    seed0 = out / f"seed{next(iter(results['seeds']))}"
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, key), color in zip((("grpo", "reward"), ("ppo", "reward_exact")), ("tab:blue", "tab:orange")):
        c = _curve(seed0 / name)
        ax.plot(c["step"], c[key], "-", lw=0.6, alpha=0.35, color=color)
        ax.plot(c["step"], _smooth(c[key], 20), "-", color=color,
                label="PPO (reward model): exact-answer rate of its sampled replies" if key == "reward_exact"
                else "GRPO: suite reward of its sampled replies (1 right, 0.1 well-formed)")
    ax.set_ylim(0, 1)
    ax.set(xlabel="optimizer step", ylabel="mean per round (line: running mean of 20 steps)",
           title="reward during training (seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rewards.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
