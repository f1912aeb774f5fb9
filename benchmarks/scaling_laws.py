"""Scaling laws at laptop scale: sweep trainlab's GPT, fit the laws, predict a larger run, test emergence.

    python benchmarks/scaling_laws.py            # about 30 minutes on 2 CPU cores
    python benchmarks/scaling_laws.py --quick    # a smoke test of the whole pipeline (minutes)
    python benchmarks/scaling_laws.py --report-only

1. Sweep (`trainlab scaling sweep stdlib-scaling`): 8 GPT sizes (16k to 330k non-embedding parameters) on three
   IsoFLOP budgets (2e11, 6e11, 2e12 FLOPs = 6 N D), the cells with 3 to 300 tokens per parameter, a search over
   3 learning rates per size (extended while the best is at an edge). The standard library's source,
   512-token BPE, 64-token context.
2. Fit (`trainlab scaling fit`): the parametric law (approach 3) with bootstrap errors, approaches 1 and 2, and
   Kaplan's power laws, beside the published values; plots.
3. Prediction: the fitted law picks the compute-optimal model for 3x the largest budget (6e12); that model is
   trained afterwards (the nearest GPT shape, the rate of the nearest searched size) and its loss compared with
   the prediction made before it ran. Goal: within 3%.
4. Emergence: GPTs of 4 sizes trained on generated addition (`a+b=c`, operands of 1 to 4 digits, characters),
   scored on held-out problems by exact match and by the fraction of right digits, per operand length.

Results: benchmarks/results/scaling/ (results.json, scaling_laws.md, plots); the last line is
`prediction_error: X.X%` (relative error of the held-out run's predicted loss).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = ["15k", "25k", "40k", "65k", "100k", "160k", "250k", "400k"]
FLOPS = ["2e11", "6e11", "2e12"]
LRS = ["4e-3", "8e-3", "1.6e-2"]
BAND = ["3", "300"]
HOLDOUT_FLOPS = 6e12
EMERGENCE_SIZES = ["10k", "30k", "100k", "300k"]
EMERGENCE_TOKENS = "3M"
MAX_DIGITS = 4


def trainlab(*args: str) -> str:
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): trainlab {' '.join(args)}\n{r.stderr[-3000:]}")
    print(f"  {time.time() - t:6.0f} s  trainlab {' '.join(args[:3])} ...", flush=True)
    return r.stdout


def sweep(out: Path, quick: bool) -> dict:
    extra = ["data.max_bytes=600000", "data.split=tail"] if quick else []
    sizes, flops = (["10k", "30k", "60k"], ["3e10", "1e11"]) if quick else (SIZES, FLOPS)
    lrs = ["4e-3"] if quick else LRS
    t = time.time()
    log = trainlab("scaling", "sweep", "stdlib-scaling", *extra, "--sizes", *sizes, "--flops", *flops,
                   "--lrs", *lrs, "--tokens-per-param", *(["1", "1000"] if quick else BAND),
                   "--out", str(out / "sweep"))
    (out / "sweep.log").write_text(log)
    fit = json.loads(trainlab("scaling", "fit", str(out / "sweep"), "--json", "--bootstrap", "100",
                              "--plots", str(out / "plots")))
    return {"fit": fit, "sweep_wall_s": time.time() - t, "extra": extra, "sizes": sizes, "flops": flops}


def holdout(out: Path, res: dict, quick: bool) -> dict:
    """Train the model the fit calls compute-optimal for HOLDOUT_FLOPS; compare with the prediction."""
    from trainlab import config
    from trainlab.scaling import law as law_lib, points as points_lib, sweep as sweep_lib

    law = law_lib.Law.from_dict(res["fit"])
    c = HOLDOUT_FLOPS / (20 if quick else 1)
    n_opt, _ = law.optimal(c)
    cfg = config.load_recipe("stdlib-scaling", res["extra"])
    size = sweep_lib.shape_for(cfg.model, n_opt)
    meta = json.loads((out / "sweep" / "sweep.json").read_text())
    choice = {s["name"]: (s["params"], meta["lr_choice"].get(s["name"])) for s in meta["sizes"]}
    nearest = min((v for v in choice.values() if v[1]), key=lambda v: abs(math.log(v[0] / size.params)))
    d = c / (6 * size.params)
    predicted = law.loss(size.params, round(d / 2048) * 2048)
    trainlab("scaling", "sweep", "stdlib-scaling", *res["extra"], "--sizes", f"{size.n_layer}x{size.n_embd}",
             "--flops", f"{c:g}", "--lrs", f"{nearest[1]:g}", "--out", str(out / "holdout"))
    p = points_lib.read_csv(out / "holdout").finals()
    actual = float(p.loss[0])
    return {"flops": c, "n_opt": n_opt, "shape": size.name, "params": size.params, "tokens": float(p.tokens[0]),
            "lr": nearest[1], "predicted": law.loss(size.params, float(p.tokens[0])), "predicted_before": predicted,
            "actual": actual, "error_pct": 100 * (law.loss(size.params, float(p.tokens[0])) / actual - 1)}


def emergence(out: Path, quick: bool) -> dict:
    from trainlab import models
    from trainlab.data import tokenizer as tok_lib
    from trainlab.scaling import emergence as em
    from trainlab.scaling import sweep as sweep_lib

    folder = out / "emergence"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "addition.txt"
    seen = em.write_corpus(corpus, 30000 if quick else 300000, MAX_DIGITS, seed=0)
    recipe = folder / "addition-gpt.toml"
    base = (ROOT / "recipes" / "stdlib-scaling.toml").read_text()
    recipe.write_text(base.replace('source = "stdlib"', f'source = "text"\npath = "{corpus}"\nsplit = "tail"')
                      .replace('tokenizer = "bpe"', 'tokenizer = "char"').replace("vocab_size = 512\n", "")
                      .replace('description = "', 'description = "Addition (generated): '))
    sizes = EMERGENCE_SIZES[:2] if quick else EMERGENCE_SIZES
    tokens = "200k" if quick else EMERGENCE_TOKENS
    trainlab("scaling", "sweep", str(recipe), f"data.cache_dir={folder / 'cache'}", "--sizes", *sizes,
             "--tokens", tokens, "--lrs", "4e-3", "--out", str(folder / "sweep"))
    rows = []
    for run in sorted((folder / "sweep" / "runs").iterdir()):
        model, info = models.load(run / "model")
        tok = tok_lib.load(run / "model" / "tokenizer.json")
        n = sweep_lib.count_params(model.cfg, model.cfg.n_layer, model.cfg.n_embd, model.cfg.n_head)
        for digits in range(1, MAX_DIGITS + 1):
            problems, fresh = em.held_out(100 if quick else 400, digits, seen)
            s = em.score(model, tok, problems)
            rows.append({"run": run.name, "params": n, "digits": digits, "held_out": fresh, **s})
            print(f"  {run.name:<28} {digits} digits: exact {s['exact_match']:.3f}  per digit "
                  f"{s['digit_accuracy']:.3f}", flush=True)
    return {"rows": rows, "tokens": tokens}


def plot_emergence(rows: list[dict], path: Path) -> None:
    from trainlab.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "exact_match", "exact match"), (axes[1], "digit_accuracy",
                                                                      "per-digit accuracy")):
        for digits in sorted({r["digits"] for r in rows}):
            rs = sorted((r for r in rows if r["digits"] == digits), key=lambda r: r["params"])
            ax.plot([r["params"] for r in rs], [r[key] for r in rs], "o-", label=f"{digits}-digit operands")
        ax.set(xscale="log", xlabel="non-embedding parameters", title=f"Addition: {title}", ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out problems")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(res: dict, out: Path) -> str:
    from trainlab.scaling.law import EPOCH, HOFFMANN, KEYS, PUBLISHED_EXPONENTS

    f = res["fit"]
    se = f.get("se") or {}
    lines = ["# Scaling laws at laptop scale", "",
             f"trainlab's GPT on the Python standard library (512-token BPE, 64-token context), {len(res['sizes'])} "
             f"sizes on IsoFLOP budgets {', '.join(res['flops'])}, {BAND[0]}-{BAND[1]} tokens per parameter, "
             f"learning rate searched per size; {f['fit']['points']} runs fitted; sweep and fits took "
             f"{res['sweep_wall_s'] / 60:.0f} min on 2 CPU cores. N counts non-embedding parameters (Kaplan et al.); "
             "Hoffmann's and Epoch's laws count all parameters of far larger models: the exponents compare, the "
             "constants do not.", "",
             "## The parametric law L(N, D) = E + A/N^alpha + B/D^beta (approach 3)", "",
             "| | this sweep | bootstrap s.e. | Hoffmann et al. 2022 | Epoch AI 2024 |", "|---|---|---|---|---|"]
    for k in KEYS:
        lines.append(f"| {k} | {f[k]:.4g} | {se.get(k, float('nan')):.3g} | {getattr(HOFFMANN, k):.4g} | "
                     f"{getattr(EPOCH, k):.4g} |")
    lines += ["", "## Compute-optimal allocation: N_opt ~ C^a, D_opt ~ C^b", "", "| | a | b |", "|---|---|---|"]
    for i in (3, 1, 2):
        a = f[f"approach{i}"]
        lines.append(f"| this sweep, approach {i} | " + (f"{a['a']:.3f} | {a['b']:.3f} |" if "a" in a else
                                                          f"skipped: {a['skipped']} | |"))
    for name, (a, b) in PUBLISHED_EXPONENTS.items():
        lines.append(f"| {name} | {a:.2f} | {b:.2f} |")
    lines += ["", "## Kaplan et al.'s power laws over the frontier", "", "| | alpha (this sweep) | 95% CI | R^2 | "
              "Kaplan et al. 2020 |", "|---|---|---|---|---|"]
    published = {"N": 0.076, "D": 0.095, "C": 0.050}
    for x, k in f["kaplan"].items():
        if "alpha" in k:
            lines.append(f"| L({x}) | {k['alpha']:.4f} | {k['ci95'][0]:.4f}..{k['ci95'][1]:.4f} | {k['r2']:.3f} | "
                         f"{published[x]} |")
        else:
            lines.append(f"| L({x}) | skipped: {k['skipped']} | | | {published[x]} |")
    h = res.get("holdout")
    if h:
        lines += ["", "## Predicting a larger run", "",
                  f"The fit called N = {h['n_opt']:,.0f} compute-optimal for C = {h['flops']:.2g}; the nearest shape "
                  f"{h['shape']} ({h['params']:,} parameters) trained on {h['tokens']:,.0f} tokens at lr "
                  f"{h['lr']:g} reached a validation loss of {h['actual']:.4f}; the law predicted "
                  f"{h['predicted']:.4f}: **{h['error_pct']:+.1f}%** (goal: within 3%)."]
    e = res.get("emergence")
    if e:
        lines += ["", "## Emergence: addition, exact match against per-digit accuracy", "",
                  f"Each model trained on {e['tokens']} characters of `a+b=c` (operands of 1-{MAX_DIGITS} digits); "
                  "held-out problems, greedy answers.", "",
                  "| parameters | digits | problems | exact match | per-digit accuracy |", "|---|---|---|---|---|"]
        for r in sorted(e["rows"], key=lambda r: (r["digits"], r["params"])):
            kind = "held out" if r["held_out"] else "may be in training"
            lines.append(f"| {r['params']:,} | {r['digits']} | {r['problems']} {kind} | {r['exact_match']:.3f} | "
                         f"{r['digit_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny grid on a slice of the data (a smoke test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from results.json")
    ap.add_argument("--skip-emergence", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        res = json.loads((out / "results.json").read_text())
    else:
        res = sweep(out, args.quick)
        print("fit:", {k: round(res["fit"][k], 4) for k in ("E", "A", "B", "alpha", "beta")}, flush=True)
        res["holdout"] = holdout(out, res, args.quick)
        print("holdout:", res["holdout"], flush=True)
        if not args.skip_emergence:
            res["emergence"] = emergence(out, args.quick)
        (out / "results.json").write_text(json.dumps(res, indent=2))
    if res.get("emergence"):
        plot_emergence(res["emergence"]["rows"], out / "plots" / "scaling_emergence.png")
    from trainlab.scaling import plots

    h = res["holdout"]
    from trainlab.scaling import law as law_lib, points as points_lib

    law = law_lib.Law.from_dict(res["fit"])
    p = points_lib.read_csv(out / "sweep").finals()
    rows = [{"label": r, "predicted": law.loss(n, d), "actual": l} for r, n, d, l in
            zip(p.run, p.params, p.tokens, p.loss)]
    rows.append({"label": h["shape"], "predicted": h["predicted"], "actual": h["actual"], "held_out": True})
    plots.predicted_vs_actual(rows, out / "plots" / "scaling_prediction.png")
    text = report(res, out)
    (out / "scaling_laws.md").write_text(text)
    if not args.quick:
        docs = ROOT / "docs" / "benchmarks"
        shutil.copy(out / "scaling_laws.md", docs / "scaling_laws.md")
        shutil.copy(out / "results.json", docs / "scaling_laws.json")
        for png in (out / "plots").glob("*.png"):
            shutil.copy(png, docs / png.name)
    print(text)
    print(f"prediction_error: {h['error_pct']:.1f}%")


if __name__ == "__main__":
    main()
