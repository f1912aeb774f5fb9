"""Scaling laws at laptop scale: sweep trainlab's GPT, fit the laws, predict larger runs, test emergence.

    python benchmarks/scaling_laws.py            # about 50 minutes on 2 CPU cores
    python benchmarks/scaling_laws.py --quick    # a smoke test of the whole pipeline (minutes)
    python benchmarks/scaling_laws.py --report-only

1. Sweep (`trainlab scaling sweep stdlib-scaling`): 5 GPT shapes (16k to 222k non-embedding parameters, each
   about twice the last from 28k) on 1M, 2M, 4M and 8M tokens: 20 runs, whose diagonals share a compute budget
   (IsoFLOP profiles of 3 to 5 sizes); a learning-rate search per size (3 rates, extended while the best is at
   an edge). The standard library's source, 512-token BPE, 64-token context.
2. Fit (`trainlab scaling fit`): the parametric law (approach 3) with bootstrap errors, approaches 1 and 2, and
   Kaplan's power laws, beside the published values; plots.
3. Prediction: the law fitted without the run of most compute (`--max-flops`: the largest size on the most
   tokens, 2x the compute of any fitted run) predicts it; and the law fitted on the four smaller sizes
   (`--max-params`) predicts the four runs of the largest. Goal: within 3%.
4. Emergence: GPTs of the sweep's 5 shapes trained on 5M characters of generated addition (`a+b=c`, operands of 1 to 3
   digits), the learning rate searched per size, scored on held-out problems by exact match and by the fraction
   of right digits, per operand length.

Results: benchmarks/results/scaling/ (results.json, scaling_laws.md, plots); the last line is
`prediction_error: X.X%` (the relative error of the predicted loss of the run of most compute, fitted without it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = ["1x32", "1x48", "2x48", "2x64", "2x96"]
TOKENS = ["1M", "2M", "4M", "8M"]
LRS = ["3e-3", "6e-3", "1.2e-2"]
EMERGENCE_SIZES = SIZES
EMERGENCE_TOKENS = "5M"
EMERGENCE_LRS = ["4e-3", "8e-3"]
MAX_DIGITS = 3


def trainlab(*args: str) -> str:
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): trainlab {' '.join(args)}\n{r.stderr[-3000:]}")
    print(f"  {time.time() - t:6.0f} s  trainlab {' '.join(args[:3])} ...", flush=True)
    return r.stdout


def sweep(out: Path, quick: bool) -> dict:
    extra = ["data.max_bytes=600000", "data.split=tail"] if quick else []
    sizes, tokens = (["1x32", "2x32", "2x48"], ["100k", "300k", "900k"]) if quick else (SIZES, TOKENS)
    lrs = ["4e-3"] if quick else LRS
    t = time.time()
    log = trainlab("scaling", "sweep", "stdlib-scaling", *extra, "--sizes", *sizes, "--tokens", *tokens,
                   "--lrs", *lrs, "--out", str(out / "sweep"))
    (out / "sweep.log").write_text(log)
    fit = json.loads(trainlab("scaling", "fit", str(out / "sweep"), "--json", "--bootstrap", "100",
                              "--plots", str(out / "plots")))
    return {"fit": fit, "sweep_wall_s": time.time() - t, "extra": extra, "sizes": sizes, "tokens": tokens}


def _predict(out: Path, *limit: str) -> dict:
    """The law fitted without the runs a limit (--max-flops or --max-params) leaves out, and its predictions of
    them beside their measured losses (the fit's held_out)."""
    r = subprocess.run([sys.executable, "-m", "trainlab", "scaling", "fit", str(out / "sweep"), "--json",
                        "--bootstrap", "0", *limit], cwd=ROOT, capture_output=True, text=True)
    fit = json.loads(r.stdout) if r.returncode == 0 else {}
    if "E" not in fit:  # a fit that does not determine the law is a result too: say so
        why = fit.get("parametric", {}).get("skipped") or (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[0]
        return {"error": why, "limit": list(limit), "runs": []}
    rows = [{"run": h["run"], "params": h["params"], "tokens": h["tokens"], "predicted": h["predicted"],
             "actual": h["measured"], "error_pct": h["error_pct"]} for h in fit["held_out"]]
    return {"limit": list(limit), "fitted_points": fit["fit"]["points"], "notes": fit.get("notes", []),
            "law": {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")}, "runs": rows}


def holdout(out: Path) -> dict:
    """(1) Fit on every run but the one of the most compute (largest size, most tokens) and predict it;
    (2) fit on every size but the largest and predict the largest size's runs."""
    from trainlab.scaling import points as points_lib

    p = points_lib.read_csv(out / "sweep").finals()
    by_compute = _predict(out, "--max-flops", f"{p.flops.max() * 0.99:.6g}")
    by_size = _predict(out, "--max-params", f"{p.params.max() * 0.99:.0f}")
    head = by_compute["runs"][0]["error_pct"] if by_compute["runs"] else float("nan")
    return {"largest_run": by_compute, "largest_size": by_size, "error_pct": head}


def emergence(out: Path, quick: bool) -> dict:
    from trainlab import models
    from trainlab.data import tokenizer as tok_lib
    from trainlab.scaling import emergence as em
    from trainlab.scaling import sweep as sweep_lib

    folder = out / "emergence"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "addition.txt"
    seen = em.write_corpus(corpus, 30000 if quick else 500000, MAX_DIGITS, seed=0)
    recipe = folder / "addition-gpt.toml"
    base = (ROOT / "recipes" / "stdlib-scaling.toml").read_text()
    recipe.write_text(base.replace('source = "stdlib"', f'source = "text"\npath = "{corpus}"\nsplit = "tail"')
                      .replace('tokenizer = "bpe"', 'tokenizer = "char"').replace("vocab_size = 512\n", "")
                      .replace('description = "', 'description = "Addition (generated): '))
    sizes = EMERGENCE_SIZES[:2] if quick else EMERGENCE_SIZES
    tokens = "200k" if quick else EMERGENCE_TOKENS
    trainlab("scaling", "sweep", str(recipe), f"data.cache_dir={folder / 'cache'}", "--sizes", *sizes,
             "--tokens", tokens, "--lrs", *(["4e-3"] if quick else EMERGENCE_LRS), "--out", str(folder / "sweep"))
    chosen = {r.split(",")[0] for r in (folder / "sweep" / "points.csv").read_text().splitlines()[1:]}
    rows = []
    for run in sorted(d for d in (folder / "sweep" / "runs").iterdir() if d.name in chosen):
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
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # 2, 3, 4 x 10^4 labels overlap
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction right (greedy answers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(res: dict, out: Path) -> str:
    # Training time from the runs themselves: a rerun of the benchmark skips finished runs and takes seconds.
    walls = [json.loads(p.read_text()).get("wall_s", 0) for p in (out / "sweep" / "runs").glob("*/summary.json")]
    res["runs_trained"], res["train_s"] = len(walls), sum(walls)
    from trainlab.scaling.law import EPOCH, HOFFMANN, KEYS, PUBLISHED_EXPONENTS

    f = res["fit"]
    se = f.get("se") or {}
    lines = ["# Scaling laws at laptop scale", "",
             f"trainlab's GPT on the Python standard library (512-token BPE, 64-token context), sizes "
             f"{', '.join(res['sizes'])} on {', '.join(res['tokens'])} tokens, learning rate searched per size; "
             f"{f['fit']['points']} runs fitted of {res['runs_trained']} trained (the rate search included) in "
             f"{res['train_s'] / 60:.0f} min of training on 2 CPU cores. N counts non-embedding parameters (Kaplan et al.); "
             "Hoffmann's and Epoch's laws count all parameters of far larger models: the exponents compare, the "
             "constants do not.", "",
             "## The parametric law L(N, D) = E + A/N^alpha + B/D^beta (approach 3)", "",
             "| | this sweep | bootstrap s.e. | Hoffmann et al. 2022 | Epoch AI 2024 |", "|---|---|---|---|---|"]
    for k in KEYS:
        lines.append(f"| {k} | {f[k]:.4g} | {se.get(k, float('nan')):.3g} | {getattr(HOFFMANN, k):.4g} | "
                     f"{getattr(EPOCH, k):.4g} |")
    lines += [""] + [f"Note: {n}." for n in f.get("notes", [])]
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
        lines += ["", "## Predicting larger runs", "",
                  "Laws fitted without some runs of the sweep, against those runs (trained in the same sweep, "
                  "left out of the fit):", "",
                  "| left out | fitted runs | law (E, A, B, alpha, beta) | run | predicted | measured | error |",
                  "|---|---|---|---|---|---|---|"]
        for name, part in (("the run of most compute", h["largest_run"]), ("the largest size", h["largest_size"])):
            if part.get("error"):
                lines.append(f"| {name} | | {part['error']} | | | | |")
                continue
            lw = part["law"]
            law = f"{lw['E']:.3g}, {lw['A']:.4g}, {lw['B']:.4g}, {lw['alpha']:.3f}, {lw['beta']:.3f}"
            for r in part["runs"]:
                lines.append(f"| {name} | {part['fitted_points']} | {law} | {r['run']} | {r['predicted']:.4f} | "
                             f"{r['actual']:.4f} | {r['error_pct']:+.1f}% |")
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
        res["holdout"] = holdout(out)
        print("holdout:", res["holdout"], flush=True)
        if not args.skip_emergence:
            res["emergence"] = emergence(out, args.quick)
        (out / "results.json").write_text(json.dumps(res, indent=2))
    if res.get("emergence"):
        plot_emergence(res["emergence"]["rows"], out / "plots" / "scaling_emergence.png")
    from trainlab.scaling import law as law_lib, plots, points as points_lib

    h = res["holdout"]
    part = h["largest_run"] if not h["largest_run"].get("error") else h["largest_size"]
    if not part.get("error"):
        points = points_lib.read_csv(out / "sweep")
        held = {i for i, r in enumerate(points.finals().run) if r in {x["run"] for x in part["runs"]}}
        rows = plots.prediction_rows(law_lib.Law.from_dict(part["law"]), points, held)
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
