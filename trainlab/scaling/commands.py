"""`trainlab scaling sweep|fit`: the command line of the scaling tools (`trainlab plan` lives in plan.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from trainlab.errors import UserError


def add_parser(sub) -> None:
    s = sub.add_parser("scaling", help="scaling laws: sweep model sizes and token budgets, fit the laws")
    ss = s.add_subparsers(dest="scaling_command", required=True, metavar="SUBCOMMAND")

    w = ss.add_parser("sweep", help="train a grid of GPT sizes x token budgets (each an ordinary run folder)",
                      description="Train every (size, budget) of the grid, with a learning-rate search per size at "
                      "its smallest budget. Rerun the same command to continue; start several processes on one "
                      "--out to share the work, or run it under torchrun (each run data-parallel). Options left out "
                      "come from the recipe's [sweep] table (sizes, tokens or flops, lrs, tokens_per_param).")
    w.add_argument("recipe", help="a GPT recipe (e.g. stdlib-scaling): data, tokenizer, optimizer and schedule")
    w.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides for every run")
    w.add_argument("--sizes", nargs="+", default=[], metavar="SIZE",
                   help="non-embedding parameter counts (20k 100k 1M: the nearest GPT shape) or LAYERSxWIDTH (4x128); "
                   "unset: the recipe's sweep.sizes")
    b = w.add_mutually_exclusive_group()
    b.add_argument("--tokens", nargs="+", metavar="D", help="training tokens per run (e.g. 1M 3M 10M)")
    b.add_argument("--flops", nargs="+", metavar="C",
                   help="training FLOPs per run, C = 6 N D: an IsoFLOP grid, each size trains C / (6 N) tokens")
    w.add_argument("--lrs", nargs="+", default=[], metavar="LR",
                   help="learning rates searched per size (default: the recipe's sweep.lrs, else its optim.lr x "
                   "0.5, 1, 2)")
    w.add_argument("--tokens-per-param", nargs=2, type=float, metavar=("LO", "HI"),
                   help="train only the cells with LO <= D / N <= HI (an IsoFLOP band around the optimum)")
    w.add_argument("--out", required=True, metavar="DIR", help="the sweep folder (continued when it exists)")
    w.add_argument("--verbose", action="store_true", help="show every run's progress")

    f = ss.add_parser("fit", help="fit scaling laws to a CSV of points or a sweep folder",
                      description="Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s approach 3, Huber on "
                      "log loss, BFGS from Epoch AI's grid of starts) and, when the points allow, approaches 1 and 2 and "
                      "Kaplan's power laws. The CSV needs columns for parameters, loss, and tokens or FLOPs "
                      "(params,tokens,loss; or Epoch AI's 'Model Size','Training FLOP','loss').")
    f.add_argument("points", help="a CSV file, or a sweep folder (its points.csv)")
    f.add_argument("--json", action="store_true", help="print the fit as JSON (the input of `trainlab plan --law`)")
    f.add_argument("--bootstrap", type=int, default=100, metavar="K",
                   help="resamples for the standard errors (default 100; 0 = none)")
    f.add_argument("--drop-highest", type=int, default=0, metavar="K",
                   help="leave out the K points of highest loss (Epoch AI's refit of Chinchilla dropped 5 outliers)")
    f.add_argument("--max-params", type=float, default=0, metavar="N",
                   help="fit only the points with at most N parameters (then predict larger ones with --predict)")
    f.add_argument("--max-flops", type=float, default=0, metavar="C",
                   help="fit only the points with at most C training FLOPs (6 N D): predict the larger runs")
    f.add_argument("--predict", nargs=2, action="append", default=[], metavar=("N", "D"),
                   help="print the fitted law's loss for N parameters trained on D tokens (repeatable)")
    f.add_argument("--plots", metavar="DIR", help="write the plots here: loss vs compute, IsoFLOP profiles, N_opt "
                   "and D_opt, predicted vs measured loss (the runs --max-params / --max-flops left out starred)")
    f.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")


def command(args) -> None:
    if args.scaling_command == "sweep":
        sweep_command(args)
    else:
        fit_command(args)


def sweep_command(args) -> None:
    from trainlab.scaling.sweep import Sweep

    sw = Sweep(args.out, args.recipe, args.overrides, args.sizes, args.tokens or [], args.flops or [], args.lrs,
               args.tokens_per_param)
    from trainlab import distributed

    say = distributed.rank() == 0  # under torchrun, one process speaks
    if say:
        grid = sw.grid()
        cells = sum(len(ds) for _, ds in grid)
        n_budgets = len({d for _, ds in grid for d in ds}) if sw.budget_kind == "tokens" else len(sw.budgets)
        if len(grid) < len(sw.sizes):
            print(f"warning: {sw.band_key} keeps {len(grid)} of the {len(sw.sizes)} sizes (the others have no "
                  "budget inside the band)", file=sys.stderr, flush=True)
        if cells < 6 or len(grid) < 3 or n_budgets < 2:
            # The runs are still worth training (they are ordinary runs), but say now what they cannot answer.
            print(f"warning: {cells} run(s) over {len(grid)} size(s) and {n_budgets} budget(s): L(N, D) needs 6 runs "
                  "or more over 2 sizes and 2 budgets or more, Kaplan's L(N) and the IsoFLOP profiles 3 sizes or "
                  "more; add sizes or budgets to fit every law", file=sys.stderr, flush=True)
        kind = "token" if sw.budget_kind == "tokens" else "FLOP"
        print(f"sweep of {args.recipe}: {len(grid)} size(s) x {len(sw.budgets)} {kind} budget(s)"
              f"{' in the band of tokens per parameter' if sw.band != (0.0, math.inf) else ''}, {len(sw.lrs)} "
              f"learning rate(s) searched per size: {cells + (len(sw.lrs) - 1) * len(grid)} runs to start with (a "
              f"search whose best rate is at an edge adds more) in {args.out}", flush=True)
    trained = sw.run(quiet=not args.verbose)
    if say:
        for line in sw.edge_warnings():
            print(f"warning: {line}", file=sys.stderr, flush=True)
        out = sw.collect()
        done = "" if trained else f"all {len(sw.jobs())} runs are done, none trained by this command; "
        print(f"{done}wrote {out}; fit it with: trainlab scaling fit {args.out}")


def _count(text: str, option: str) -> float:
    from trainlab.scaling.sweep import parse_number

    try:
        return parse_number(text, option)
    except UserError as e:
        raise UserError(e.message, "e.g. --predict 1M 20M (N parameters, D tokens)") from None


def fit_command(args) -> None:
    import numpy as np

    from trainlab.scaling import fit, points

    if args.bootstrap < 0 or args.drop_highest < 0 or not args.max_params >= 0 or not args.max_flops >= 0:
        raise UserError("--bootstrap, --drop-highest, --max-params and --max-flops must be >= 0",
                        "e.g. --bootstrap 100")
    p = points.read_csv(args.points)
    if args.drop_highest:
        if args.drop_highest >= len(p.finals()):
            raise UserError(f"--drop-highest {args.drop_highest} leaves none of the {len(p.finals())} points",
                            "drop fewer")
        # Leave out the K highest final losses, with their runs' training curves.
        worst = np.argsort(np.where(p.final, p.loss, -np.inf))[-args.drop_highest:]
        dropped = {p.run[i] for i in worst if p.run[i]}
        keep = np.ones(len(p), bool)
        keep[worst] = False
        keep &= np.array([not (r and r in dropped) for r in p.run])
        p = p.select(keep)
    every = p  # the points before --max-params / --max-flops: the ones left out are predicted and compared
    if args.max_params:
        p = p.select(p.params <= args.max_params)
    if args.max_flops:  # a run's curve goes with its final point: a run is in the fit or out of it
        big = {r for r, c, f in zip(p.run, p.flops, p.final) if f and c > args.max_flops}
        p = p.select((p.flops <= args.max_flops) & np.array([not (r and r in big) for r in p.run]))
    limits = " and ".join(o for o, v in (("--max-params", args.max_params), ("--max-flops", args.max_flops)) if v)
    kept = f"{limits} kept {len(p.finals())} of the {len(every.finals())} runs"  # said when the fit is short of runs
    cut = limits and len(p.finals()) < len(every.finals())
    try:
        result = fit.fit_all(p, bootstrap=args.bootstrap, seed=args.seed)
    except UserError as e:
        if not cut:
            raise
        raise UserError(e.message, f"{kept}: raise {'them' if ' and ' in limits else 'it'} to fit more of them") from None
    if cut and "E" not in result:
        result["notes"].append(f"{kept}, too few for the law that would predict the others: raise it to compare them")
    law = None
    if "E" in result:
        from trainlab.scaling.law import Law

        law = Law.from_dict(result)
    fitted = {(n, d, l) for n, d, l in zip(*(p.finals().params, p.finals().tokens, p.finals().loss))}
    f = every.finals()
    held = [i for i in range(len(f)) if (f.params[i], f.tokens[i], f.loss[i]) not in fitted]
    if law and held:  # the runs the limits left out, predicted by the law fitted without them
        result["held_out"] = []
        for i in held:
            predicted = law.loss(f.params[i], f.tokens[i])
            result["held_out"].append({"run": f.run[i], "params": float(f.params[i]), "tokens": float(f.tokens[i]),
                                       "measured": float(f.loss[i]), "predicted": predicted,
                                       "error_pct": 100 * (predicted / f.loss[i] - 1)})
    if args.predict:
        if law is None:
            raise UserError(f"--predict needs the parametric law L(N, D), which these points do not determine: "
                            f"{result['parametric']['skipped']}", "train more sizes and token budgets")
        predictions = []
        for n_text, d_text in args.predict:
            n, d = _count(n_text, "--predict N"), _count(d_text, "--predict D")
            q = {"params": n, "tokens": d, "loss": law.loss(n, d)}
            # A trained run of this size and budget (within 1%: runs train whole steps) is compared with it.
            i = next((i for i in range(len(f)) if abs(f.params[i] / n - 1) < 0.01 and abs(f.tokens[i] / d - 1) < 0.01),
                     None)
            if i is not None:
                q.update(run=f.run[i], measured=float(f.loss[i]), error_pct=100 * (q["loss"] / f.loss[i] - 1),
                         in_fit=i not in held)
            predictions.append(q)
        result["predictions"] = predictions
    if args.plots:
        from trainlab.scaling import plots

        result["plots"] = [str(x) for x in plots.write_all(every, result, Path(args.plots), held)]
    print(json.dumps(_clean(result), indent=2) if args.json else table(result))


def _clean(x):
    """JSON without NaN or infinity (not JSON): they become null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def table(r: dict) -> str:
    from trainlab.scaling.law import EPOCH, HOFFMANN, KEYS, PUBLISHED_EXPONENTS

    se = r.get("se") or {}
    if "E" in r:
        lines = [f"L(N, D) = E + A / N^alpha + B / D^beta, fitted to {r['fit']['points']} points "
                 f"({r['fit']['converged']} of {r['fit']['starts']} starts converged)",
                 f"{'':8}{'fit':>12}{'std err':>12}{'Hoffmann':>12}{'Epoch':>12}"]
        for k in KEYS:
            s = f"{se[k]:>12.4g}" if k in se else f"{'':>12}"
            lines.append(f"{k:<8}{r[k]:>12.4g}{s}{getattr(HOFFMANN, k):>12.4g}{getattr(EPOCH, k):>12.4g}")
    else:
        lines = [f"{r['fit']['points']} points"]
    lines += [f"note: {n}" for n in r.get("notes", [])]
    lines.append("")
    lines.append("compute-optimal exponents: N_opt ~ C^a, D_opt ~ C^b")
    rows = [("approach 3 (this fit)", r["approach3"])] + [(f"approach {i} (this fit)", r[f"approach{i}"])
                                                          for i in (1, 2)]
    for name, a in rows:
        if "skipped" in a:
            lines.append(f"  {name:<38} skipped: {a['skipped']}")
        else:
            ci = a.get("a_ci95")
            extra = f"  (a 95% CI {ci[0]:.2f}..{ci[1]:.2f}, {a['levels']} levels)" if ci and \
                all(math.isfinite(v) for v in ci) else ""
            lines.append(f"  {name:<38} a = {a['a']:.3f}  b = {a['b']:.3f}{extra}")
    for name, (a, b) in PUBLISHED_EXPONENTS.items():
        lines.append(f"  {name:<38} a = {a:.3f}  b = {b:.3f}")
    lines.append("")
    lines.append("Kaplan et al.'s power laws L(X) = (X_c / X)^alpha_X over the frontier (published: alpha_N 0.076, "
                 "alpha_D 0.095, alpha_C 0.050)")
    for x, k in r["kaplan"].items():
        if "skipped" in k:
            lines.append(f"  L({x}): skipped: {k['skipped']}")
        else:
            lines.append(f"  L({x}): alpha = {k['alpha']:.4f} (95% CI {k['ci95'][0]:.4f}..{k['ci95'][1]:.4f}), "
                         f"X_c = {k['x_c']:.3g}, R^2 = {k['r2']:.3f}, {k['points']} points")
    if r.get("held_out"):
        lines += ["", "runs left out of the fit, predicted by it:"]
        for h in r["held_out"]:
            lines.append(f"  {h['run'] or 'point'}: N = {h['params']:.3g}, D = {h['tokens']:.3g}: predicted "
                         f"{h['predicted']:.4f}, measured {h['measured']:.4f} ({h['error_pct']:+.1f}%)")
    for p in r.get("predictions", []):
        line = f"predicted loss of N = {p['params']:.3g} on D = {p['tokens']:.3g} tokens: {p['loss']:.4f}"
        if "measured" in p:
            line += (f"; measured {p['measured']:.4f} ({p['error_pct']:+.1f}%, run {p['run'] or 'in the file'}, "
                     f"{'in' if p['in_fit'] else 'left out of'} the fit)")
        lines.append(line)
    if r.get("plots"):
        lines.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(lines)
