"""The article's transfer-learning claims, measured at laptop scale on a task that ships with Python.

Task: `stdlib_classes` (which standard-library package a function comes from; split by file). Pre-training:
the `stdlib-gpt` recipe (next-token prediction on the standard library; the classification task's validation
and test files are in its held-out documents, never trained on). Everything runs through the `trainlab`
command, one run at a time, in this process's children.

  1. Transfer: test accuracy with 1%, 10% and 100% of the training labels, the pre-trained GPT fine-tuned
     (stdlib-classes-gpt) vs the same GPT from random weights (stdlib-classes-scratch), several seeds each;
     optionally MiniLM (all-MiniLM-L6-v2, a real pre-trained BERT) fine-tuned the same way.
  2. Forgetting: the pre-training objective's validation loss (next-token cross-entropy on held-out standard
     library text) before and after fine-tuning on all labels, with task accuracy, for full fine-tuning, LoRA,
     frozen lower layers, replay of pre-training text, discriminative learning rates, gradual unfreezing.
  3. Cost: trainable parameters, peak memory (the child process's max RSS, and the bytes of weights, gradients
     and AdamW state) and time per step, full fine-tuning vs LoRA.

Usage: python benchmarks/transfer.py [--seeds 3] [--steps 200] [--minilm SEEDS] [--quick] [--out benchmarks/results]
Writes OUT/transfer.json, OUT/transfer.md and OUT/transfer.png, OUT/forgetting.png; prints the tables. Runs
already completed in OUT/runs are evaluated again, not retrained (delete OUT to start over). The README's
figures are copies in docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRACTIONS = (0.01, 0.1, 1.0)


def trainlab(*args: str, quiet: bool = True) -> dict:
    """Run `trainlab ARGS` as a child process; return its wall time and peak RSS (MiB)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=ROOT,
                            stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if quiet else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(out[-3000:])
        raise SystemExit(f"trainlab {' '.join(args)} failed with status {proc.returncode}")
    return {"wall_s": time.perf_counter() - t, "max_rss_mib": usage.ru_maxrss / 1024}


def test_accuracy(run: Path) -> float:
    trainlab("eval", str(run), "--split", "test")
    return json.loads((run / "eval_test.json").read_text())["metrics"]["accuracy"]


def finetune(out: Path, name: str, recipe: str, overrides: list[str]) -> dict:
    run = out / "runs" / name
    if not (run / "summary.json").is_file() or json.loads((run / "summary.json").read_text())["status"] != "completed":
        shutil.rmtree(run, ignore_errors=True)
        cost = trainlab("train", recipe, *overrides, "--run-dir", str(run))
    else:
        cost = {"wall_s": float("nan"), "max_rss_mib": float("nan")}
    summary = json.loads((run / "summary.json").read_text())
    return {"run": str(run), "accuracy": test_accuracy(run), **cost, "summary": summary}


def lm_val_loss(model_run: Path, pretrain: Path, block: int, windows: int = 64) -> float:
    """Next-token cross-entropy of a run's trunk on the pre-training corpus's validation windows of `block`
    tokens (the fine-tuned classifiers' context: the same windows before and after)."""
    import torch
    import torch.nn.functional as F

    import trainlab as tl
    from trainlab import config
    from trainlab.data.text import TextData

    torch.set_num_threads(os.cpu_count() or 1)
    model = tl.load(model_run).model.eval()
    pre = config.load_resolved(pretrain / "config.toml").data
    data = TextData(pre.model_copy(update={"block_size": block}))
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in data.eval_batches("val", limit=max(1, windows // data.cfg.eval_batch_size)):
            logits = model.lm_logits(batch["idx"]) if hasattr(model, "lm_logits") else model(batch["idx"])
            total += F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="sum").item()
            n += batch["targets"].numel()
    return total / n


def state_bytes(summary: dict, trained: int) -> int:
    """fp32 weights of the whole model + gradients and AdamW's two moments of what trains."""
    return 4 * summary["parameters"] + 3 * 4 * trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every run")
    ap.add_argument("--minilm", type=int, default=0, metavar="SEEDS",
                    help="also fine-tune all-MiniLM-L6-v2 with this many seeds (slow on a CPU: minutes per run)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny runs, one seed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    small = ["data.max_bytes=300000", "loop.steps=20"] if a.quick else []
    seeds = range(1 if a.quick else a.seeds)
    steps = 10 if a.quick else a.steps
    common = [f"loop.steps={steps}", f"loop.eval_every={max(1, steps // 6)}"]

    pretrain = out / "runs" / "pretrain-gpt"
    if not (pretrain / "model" / "config.json").is_file():
        shutil.rmtree(pretrain, ignore_errors=True)
        print("pre-training stdlib-gpt ...", flush=True)
        cost = trainlab("train", "stdlib-gpt", *small, "--run-dir", str(pretrain))
        print(f"  {cost['wall_s']:.0f} s", flush=True)
    init = f"model.init_from={pretrain}"

    # 1. transfer --------------------------------------------------------------------------------------------
    transfer: dict[str, dict[str, list[float]]] = {}
    arms = [("pre-trained GPT", "stdlib-classes-gpt", [init]), ("GPT from scratch", "stdlib-classes-scratch",
                                                                  [f"data.tokenizer_path={pretrain}/model/tokenizer.json"])]
    if a.minilm:
        arms.append(("MiniLM (pre-trained BERT)", "stdlib-classes-minilm", []))
    for label, recipe, extra in arms:
        transfer[label] = {}
        for f in FRACTIONS:
            accs = []
            for s in (range(a.minilm) if recipe.endswith("minilm") else seeds):
                name = f"{recipe}-f{f:g}-s{s}"
                steps_here = [] if recipe.endswith("minilm") and not a.quick else common  # MiniLM: its recipe's
                r = finetune(out, name, recipe, [*extra, *steps_here, f"data.label_fraction={f}", f"run.seed={s}"])
                accs.append(r["accuracy"])
                print(f"{label:28s} labels {f:>5.0%} seed {s}: test accuracy {r['accuracy']:.3f} "
                      f"({r['summary']['wall_s']:.0f} s)", flush=True)
            transfer[label][str(f)] = accs

    # 2. forgetting --------------------------------------------------------------------------------------------
    from trainlab import config

    batch = config.load_recipe("stdlib-classes-gpt").data.batch_size
    block = config.load_recipe("stdlib-classes-gpt").data.block_size
    before = lm_val_loss(pretrain, pretrain, block)
    methods = [
        ("full fine-tuning", []),
        ("LoRA (rank 8, attention)", ["model.lora.rank=8"]),
        ("LoRA, 10x the rate (5e-3)", ["model.lora.rank=8", "optim.lr=5e-3"]),  # adapters usually want more
        ("frozen lower half", ['optim.freeze=["wte","blocks.0","blocks.1"]']),
        ("full + replay 25%", ["data.replay_fraction=0.25"]),
        ("discriminative LR (0.5/layer)", ["optim.layer_decay=0.5"]),
        (f"gradual unfreezing ({max(1, steps // 6)} steps/layer)", [f"optim.unfreeze_every={max(1, steps // 6)}"]),
    ]
    forgetting = []
    for label, extra in methods:
        slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
        r = finetune(out, "forget-" + slug, "stdlib-classes-gpt", [init, *common, *extra, "run.seed=0"])
        after = lm_val_loss(Path(r["run"]), pretrain, block)
        s = r["summary"]
        trained = s.get("trained_parameters", s["parameters"])
        forgetting.append({"method": label, "accuracy": r["accuracy"], "lm_loss_before": before,
                           "lm_loss_after": after, "forgetting": after - before, "trained": trained,
                           "parameters": s["parameters"]})
        print(f"{label:34s} accuracy {r['accuracy']:.3f}  LM loss {before:.3f} -> {after:.3f}", flush=True)

    # 3. cost: full fine-tuning vs LoRA, timed on runs that do not evaluate in between ---------------------------
    cost = []
    for label, extra in (("full fine-tuning", []), ("LoRA (rank 8, attention)", ["model.lora.rank=8"])):
        slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
        run = out / "runs" / f"cost-{slug}"
        shutil.rmtree(run, ignore_errors=True)
        n = 20 if a.quick else 80
        used = trainlab("train", "stdlib-classes-gpt", init, *extra, f"loop.steps={n}", f"loop.eval_every={n}",
                        "loop.log_every=10", "run.seed=0", "--run-dir", str(run))
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        speeds = [x["throughput"] for x in rows if x["split"] == "train" and "throughput" in x][1:]  # after warm-up
        s = json.loads((run / "summary.json").read_text())
        cost.append({"method": label, "trained": s["trained_parameters"], "parameters": s["parameters"],
                     "step_ms": 1000 * batch / statistics.median(speeds), "max_rss_mib": used["max_rss_mib"],
                     "state_mib": state_bytes(s, s["trained_parameters"]) / 2**20,
                     "saved_kib": sum(f.stat().st_size for f in (run / "model").glob("*.safetensors")) / 1024})
        print(f"{label:28s} {cost[-1]['step_ms']:.0f} ms/step, max RSS {used['max_rss_mib']:.0f} MiB", flush=True)

    result = {"date": str(date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}",
              "python": platform.python_version(), "steps": steps, "seeds": len(seeds), "quick": a.quick,
              "pretrain": json.loads((pretrain / "summary.json").read_text())["metrics"]["val"],
              "transfer": transfer, "forgetting": forgetting, "cost": cost}
    (out / "transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    md = tables(result)
    (out / "transfer.md").write_text(md)
    print(md)
    plots(result, out)


def tables(r: dict) -> str:
    lines = [f"Measured {r['date']} on {r['machine']}, {r['steps']} fine-tuning steps per run, "
             f"{r['seeds']} seed(s); median test accuracy (min-max).", "",
             "| model | " + " | ".join(f"{float(f):.0%} labels" for f in FRACTIONS) + " |",
             "|---|" + "---|" * len(FRACTIONS)]
    for label, by in r["transfer"].items():
        cells = [f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in by.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| fine-tuning (all labels, seed 0) | test accuracy | pre-training LM val loss before -> after | "
              "forgetting | trained parameters |", "|---|---|---|---|---|"]
    for f in r["forgetting"]:
        lines.append(f"| {f['method']} | {f['accuracy']:.3f} | {f['lm_loss_before']:.3f} -> {f['lm_loss_after']:.3f} | "
                     f"{f['forgetting']:+.3f} | {f['trained']:,} of {f['parameters']:,} |")
    lines += ["", "| cost | trained parameters | time per step (median) | peak RSS of the process | "
              "weights + grads + AdamW state | model/ on disk |", "|---|---|---|---|---|---|"]
    for c in r["cost"]:
        lines.append(f"| {c['method']} | {c['trained']:,} of {c['parameters']:,} | {c['step_ms']:.0f} ms | "
                     f"{c['max_rss_mib']:.0f} MiB | {c['state_mib']:.1f} MiB | {c['saved_kib']:.0f} KiB |")
    return "\n".join(lines) + "\n"


def plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, by in r["transfer"].items():
        xs = [float(f) for f in by]
        ax.plot(xs, [statistics.median(v) for v in by.values()], marker="o", label=label)
        ax.fill_between(xs, [min(v) for v in by.values()], [max(v) for v in by.values()], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks([float(f) for f in FRACTIONS], [f"{f:.0%}" for f in FRACTIONS])
    ax.set_xlabel("fraction of training labels")
    ax.set_ylabel("test accuracy")
    ax.set_title("Pre-training vs from scratch (stdlib_classes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for f, marker in zip(r["forgetting"], "osD^vP*X"):
        ax.scatter(f["forgetting"], f["accuracy"], marker=marker, s=50, label=f["method"])
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("forgetting: rise of the pre-training LM loss (nats/token)")
    ax.set_ylabel("task test accuracy")
    ax.set_title("Forgetting vs task accuracy (all labels)")
    fig.tight_layout()
    fig.savefig(out / "forgetting.png", dpi=120)


if __name__ == "__main__":
    main()
