"""`trainlab plan`: the compute-optimal model for a budget under a scaling law, or the cost of a given model.

The budget is C training FLOPs, given directly (--flops) or as accelerators times hours times the fraction of
peak they sustain (model FLOPs utilization, MFU). A law L(N, D) = E + A / N^alpha + B / D^beta (law.py) picks
the N and D with 6 N D = C that minimize loss (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models"). With --inference-tokens T it also picks the model that reaches the same loss for the least training
plus inference compute (Sardana & Frankle 2023, "Beyond Chinchilla-Optimal"): smaller, trained on more tokens.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from trainlab.errors import UserError
from trainlab.scaling.accelerators import ACCELERATORS, accelerator
from trainlab.scaling.law import PUBLISHED, Law

DEFAULT_MFU = 0.4  # large dense transformers sustain roughly 0.3-0.5 of peak in bf16 (PaLM reports 0.46)


def load_law(spec: str | Law) -> Law:
    """A published law by name, or the JSON that `trainlab scaling fit FILE --json` writes."""
    if isinstance(spec, Law):
        return spec
    if spec.lower() in PUBLISHED:
        return PUBLISHED[spec.lower()]
    path = Path(spec)
    expected = f"--law expects {' or '.join(PUBLISHED)} or a JSON file from `trainlab scaling fit FILE --json`"
    hint = "e.g. --law epoch, or --law fit.json after `trainlab scaling fit runs.csv --json > fit.json`"
    if not path.is_file():
        raise UserError(f"{expected}; got {spec!r}, which is neither a law's name nor a file", hint)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{expected}; {spec} is not readable JSON ({type(e).__name__})", hint) from None
    if not isinstance(d, dict):
        raise UserError(f"{expected}; {spec} holds a JSON {type(d).__name__}, not an object", hint)
    if "E" not in d and isinstance(d.get("parametric"), dict) and "skipped" in d["parametric"]:
        raise UserError(f"{spec} holds no parametric law L(N, D): its fit left it out ({d['parametric']['skipped']})",
                        "plan with a fit of more sizes and token budgets, or --law epoch")
    try:
        return Law.from_dict(d, source=str(d.get("source") or f"fit read from {spec}"))
    except UserError as e:
        raise UserError(f"{spec}: {e.message}", e.hint) from None


def _number(option: str, value, what: str, low: float = 0.0, inclusive: bool = False) -> float:
    """A finite number above `low` (or at it when `inclusive`); a bool, a string or NaN is the user's mistake."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= low if inclusive else value > low)
    if not ok:
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise UserError(f"{option} must be a finite number {bound} ({what}); got {value!r}",
                        f"e.g. {option} {EXAMPLES[option]}")
    return float(value)


EXAMPLES = {"--flops": "1e21", "--params": "7e9", "--tokens": "140e9", "--peak-flops": "989e12", "--gpus": "8",
            "--hours": "24", "--mfu": "0.4", "--price": "2.5", "--inference-tokens": "1e12"}


def iso_loss_tokens(law: Law, loss: float, n: float) -> float:
    """The D with law.loss(n, D) = loss: D = (B / (L - E - A/N^alpha))^(1/beta), or inf where N alone cannot
    get there (L - E - A/N^alpha <= 0)."""
    gap = loss - law.E - law.A / n**law.alpha
    if not gap > 0:
        return math.inf
    log_d = (math.log(law.B) - math.log(gap)) / law.beta
    return math.exp(log_d) if log_d < 709 else math.inf  # never an OverflowError


def inference_optimal(law: Law, loss: float, inference_tokens: float) -> tuple[float, float]:
    """The (N, D) on the iso-loss curve law.loss(N, D) = loss that minimizes training plus inference FLOPs
    F(N) = 6 N D(N) + 2 N T (forward only at inference). Sardana & Frankle 2023, "Beyond Chinchilla-Optimal".

    With u = log N and r = A N^-alpha / (L - E), log(N D(N)) = u - log(L - E - A e^(-alpha u)) / beta + const
    has derivative h'(u) = 1 - (alpha / beta) r / (1 - r), increasing in u: convex. So F(u) = 6 e^h + 2 T e^u is
    convex and dF/du = N (6 D h' + 2 T) changes sign once. It is negative as N falls to where D blows up,
    N_min = (A / (L - E))^(1/alpha), and >= 0 at the training-only optimum h' = 0, where r = beta / (alpha + beta),
    N_0 = N_min ((alpha + beta) / beta)^(1/alpha). Bisection on log N over [N_min, N_0] finds the root."""
    a, b, gap = law.alpha, law.beta, loss - law.E
    if not gap > 0:
        raise UserError(f"no model reaches loss {loss:.4g} under a law whose irreducible loss is {law.E:.4g}",
                        "plan for a larger budget")
    lo = math.log(law.A / gap) / a  # log N_min
    hi = lo + math.log((a + b) / b) / a  # log N_0

    def slope_sign(u: float) -> float:  # dF/du divided by N
        n = math.exp(u)
        r = law.A / n**a / gap
        d = iso_loss_tokens(law, loss, n)
        return 6 * d * (1 - (a / b) * r / (1 - r)) + 2 * inference_tokens if math.isfinite(d) else -math.inf

    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # the interval is one float wide
            break
        lo, hi = (mid, hi) if slope_sign(mid) < 0 else (lo, mid)
    n = math.exp(hi)  # hi stays on the side where dF/du >= 0, so D(n) is finite
    return n, iso_loss_tokens(law, loss, n)


def plan(flops: float | None = None, *, params: float | None = None, tokens: float | None = None,
         gpu: str | None = None, peak_flops: float | None = None, gpus: float | None = None,
         hours: float | None = None, mfu: float = DEFAULT_MFU, price: float | None = None,
         law: str | Law = "epoch", inference_tokens: float | None = None) -> dict:
    """The model a budget buys under `law` (or the given model's cost), as a dict the CLI prints.

    The budget is `flops`, or peak_flops (or the table's for `gpu`) * gpus * hours * 3600 * mfu, or 6 N D of
    the given params and tokens. `params` or `tokens` alone with a budget fixes one and spends the rest on the
    other; neither asks the law for the compute-optimal pair."""
    law = load_law(law)
    mfu = _number("--mfu", mfu, "the fraction of peak FLOP/s sustained")
    if mfu > 1:
        raise UserError(f"--mfu is a fraction of peak FLOP/s, at most 1; got {mfu:g}", "e.g. --mfu 0.4")
    chip = accelerator(gpu) if gpu is not None and peak_flops is None else None
    peak = _number("--peak-flops", peak_flops, "FLOP/s of one accelerator") if peak_flops is not None \
        else chip.flops if chip else None
    if peak is None and any(v is not None for v in (gpus, hours, price)):
        raise UserError("--gpus, --hours and --price need an accelerator; got none",
                        f"add --gpu NAME ({', '.join(ACCELERATORS)}) or --peak-flops F")
    k = _number("--gpus", gpus, "accelerators") if gpus is not None else 1.0
    if not k.is_integer():
        raise UserError(f"--gpus must be a whole number of accelerators; got {k:g}", "e.g. --gpus 8")
    sustained = peak * mfu * k if peak is not None else None  # FLOP/s the whole cluster delivers
    usd = _number("--price", price, "US dollars per accelerator-hour") if price is not None else None

    budgets = {}
    if flops is not None:
        budgets["--flops"] = _number("--flops", flops, "training FLOPs")
    if hours is not None:  # e.g. 8 GPUs * 989e12 * 0.4 * 24 h * 3600 s = 2.7e20 FLOPs
        budgets["--hours"] = sustained * _number("--hours", hours, "wall-clock hours") * 3600
    n = _number("--params", params, "parameters") if params is not None else None
    d = _number("--tokens", tokens, "training tokens") if tokens is not None else None
    if n is not None and d is not None:
        budgets["--params and --tokens"] = 6 * n * d  # C = 6 N D: forward 2, backward 4 per parameter and token
    if len(budgets) > 1:
        raise UserError(f"give one compute budget; got {' and '.join(budgets)}",
                        "drop all but one of --flops, --gpus/--hours, or --params with --tokens")
    if not budgets:
        if (n is None) != (d is None):
            given, other = ("--params", "--tokens D") if n is not None else ("--tokens", "--params N")
            raise UserError(f"{given} alone is neither a budget nor a whole model; got no {other.split()[0]}, "
                            "--flops or --hours",
                            f"add {other} to cost that model, or a budget (--flops C, or --gpu NAME --hours H) to "
                            "spend on it")
        if peak is not None:
            raise UserError("an accelerator gives the speed, not the budget; got no --hours, --flops or model",
                            "add --hours H (and --gpus K), e.g. --gpu h100 --gpus 8 --hours 24")
        raise UserError("plan needs a budget or a model; got neither",
                        "give --flops C, or --gpu NAME --gpus K --hours H, or --params N --tokens D")
    (given_as, c), = budgets.items()
    if not math.isfinite(c):
        raise UserError(f"the budget from {given_as} is {c} FLOPs: past the range of a float",
                        "give smaller numbers")
    if n is None and d is None:
        n, d = law.optimal(c)  # Hoffmann et al. 2022, eq. 4
    elif d is None:
        d = c / (6 * n)
    elif n is None:
        n = c / (6 * d)
    out = {"mode": "compute-optimal" if params is None and tokens is None else "given", "budget_from": given_as,
           "law": law.to_dict(), **_model(law, n, d, sustained, k, usd), "notes": _extrapolation(law, c, n, d)}
    if peak is not None:
        out["gpu"] = {"name": chip.name if chip else (gpu or "custom"), "peak_flops": peak, "gpus": int(k),
                      "mfu": mfu, "precision": chip.precision if chip else "your precision",
                      "source": chip.source if chip else "given by --peak-flops"}
    if inference_tokens is not None:
        t = _number("--inference-tokens", inference_tokens, "tokens served over the model's life", inclusive=True)
        n2, d2 = inference_optimal(law, out["loss"], t)
        ia = _model(law, n2, d2, sustained, k, usd)
        out["inference_tokens"] = t
        for m in (out, ia):
            m["inference_flops"] = 2 * m["params"] * t  # forward only: 2 FLOPs per parameter and token
            m["total_flops"] = m["flops"] + m["inference_flops"]
        out["inference_aware"] = ia
        out["total_flops_saving"] = 1 - ia["total_flops"] / out["total_flops"]
    return out


def _extrapolation(law: Law, flops: float, n: float, d: float) -> list[str]:
    """Where the plan lies far (10x or more) beyond the points the law was fitted to: say how far."""
    notes = []
    for key, value, what in (("flops", flops, "FLOPs"), ("params", n, "parameters"), ("tokens", d, "tokens")):
        lo, hi = law.fitted.get(key, (0, math.inf))
        if value >= 10 * hi or value <= lo / 10:
            notes.append(f"{value:.3g} {what} is {max(value / hi, lo / value):.3g}x outside the fitted runs "
                         f"({lo:.3g} to {hi:.3g}): an extrapolation, least reliable the farther it goes")
    return notes


def _model(law: Law, n: float, d: float, sustained: float | None, gpus: float, price: float | None) -> dict:
    m = {"params": n, "tokens": d, "tokens_per_param": d / n, "flops": 6 * n * d, "loss": law.loss(n, d)}
    if sustained is not None:
        seconds = m["flops"] / sustained  # on all the accelerators together
        m["gpu_hours"] = seconds * gpus / 3600
        m["hours"] = seconds / 3600
        if price is not None:
            m["cost_usd"] = m["gpu_hours"] * price
    return m


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="the compute-optimal model for a budget under a scaling law, or a given model's cost",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chinchilla-style planning: the N parameters and D tokens with 6 N D = C that a scaling law\n"
                    "predicts train to the lowest loss, that loss, and the time and cost on an accelerator;\n"
                    "or, with --params and --tokens, the FLOPs, loss, time and cost of a model you name.",
        epilog="examples:\n"
               "  trainlab plan --flops 5.9e23 --law hoffmann\n"
               "  trainlab plan --gpu h100 --gpus 64 --hours 720 --price 2.5\n"
               "  trainlab plan --params 175e9 --tokens 300e9 --gpu v100 --mfu 0.224 --price 1.5\n"
               "  trainlab plan --flops 1e23 --inference-tokens 2e12 --json")
    p.add_argument("--flops", metavar="C", help="training compute budget in FLOPs, e.g. 1e21")
    p.add_argument("--gpu", metavar="NAME", help=f"an accelerator whose dense peak FLOP/s is known: "
                                                 f"{', '.join(ACCELERATORS)}")
    p.add_argument("--peak-flops", metavar="F", help="peak FLOP/s of one accelerator at your training "
                                                     "precision, dense (for an accelerator --gpu does not list)")
    p.add_argument("--gpus", metavar="K", help="how many accelerators train together (default 1)")
    p.add_argument("--hours", metavar="H", help="wall-clock hours: the budget is C = peak * K * H * 3600 * MFU")
    p.add_argument("--mfu", metavar="U", default=str(DEFAULT_MFU),
                   help=f"model FLOPs utilization: the fraction of peak that training sustains (default "
                        f"{DEFAULT_MFU}; large runs reach about 0.3-0.5)")
    p.add_argument("--price", metavar="USD", help="US dollars per accelerator-hour, for the cost")
    p.add_argument("--params", metavar="N", help="a given parameter count: with --tokens, cost that model; "
                                                 "with a budget, train it on D = C / (6N) tokens")
    p.add_argument("--tokens", metavar="D", help="a given number of training tokens")
    p.add_argument("--law", default="epoch", metavar="LAW",
                   help="hoffmann (Hoffmann et al. 2022), epoch (Besiroglu et al. 2024; the default), or "
                        "FILE.json from `trainlab scaling fit FILE --json`")
    p.add_argument("--inference-tokens", metavar="T",
                   help="tokens the model will serve: also find the smaller model, trained longer, that reaches "
                        "the same loss for the least training + inference FLOPs (Sardana & Frankle 2023)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def command(args: argparse.Namespace) -> None:
    def num(option: str):
        text = getattr(args, option[2:].replace("-", "_"))
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{option} expects a number; got {text!r}", f"e.g. {option} {EXAMPLES[option]}") from None

    out = plan(num("--flops"), params=num("--params"), tokens=num("--tokens"), gpu=args.gpu,
               peak_flops=num("--peak-flops"), gpus=num("--gpus"), hours=num("--hours"), mfu=num("--mfu"),
               price=num("--price"), law=args.law, inference_tokens=num("--inference-tokens"))
    print(json.dumps(out, indent=2) if args.json else table(out))


def _count(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _hours(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _tflops(x: float) -> str:
    return f"{x / 1e12:,.0f}" if x >= 1e15 else f"{x / 1e12:.4g}"


def table(out: dict) -> str:
    """The plan as a few aligned lines: one column for the model, a second for the inference-aware one."""
    law = out["law"]
    lines = [f"law: {law['source'] or 'custom'}: L(N, D) = {law['E']:g} + {law['A']:g} / N^{law['alpha']:g}"
             f" + {law['B']:g} / D^{law['beta']:g}"]
    if "gpu" in out:
        g = out["gpu"]
        lines.append(f"accelerator: {g['gpus']} x {g['name']} at {_tflops(g['peak_flops'])} TFLOP/s peak "
                     f"({g['precision']}; {g['source']}) x MFU {g['mfu']:g} = "
                     f"{_tflops(g['peak_flops'] * g['mfu'] * g['gpus'])} TFLOP/s sustained")
    models = [out] + ([out["inference_aware"]] if "inference_aware" in out else [])
    heads = ["compute-optimal" if out["mode"] == "compute-optimal" else "given model", "inference-aware"]
    rows = [("", *heads[:len(models)]),
            ("parameters (N)", *(_count(m["params"]) for m in models)),
            ("tokens (D)", *(_count(m["tokens"]) for m in models)),
            ("tokens per parameter", *(f"{m['tokens_per_param']:.1f}" for m in models)),
            ("training FLOPs (6ND)", *(f"{m['flops']:.3g}" for m in models)),
            ("predicted loss", *(f"{m['loss']:.4f}" for m in models))]
    if "gpu_hours" in out:
        rows += [("GPU-hours", *(_hours(m["gpu_hours"]) for m in models)),
                 ("wall hours", *(_hours(m["hours"]) for m in models))]
    if "cost_usd" in out:
        rows.append(("cost (USD)", *(f"${m['cost_usd']:,.0f}" for m in models)))
    if "inference_aware" in out:
        rows += [(f"inference FLOPs (2N x {_count(out['inference_tokens'])})",
                  *(f"{m['inference_flops']:.3g}" for m in models)),
                 ("total FLOPs", *(f"{m['total_flops']:.3g}" for m in models))]
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, width)))
              .rstrip() for r in rows]
    if "inference_aware" in out:
        lines.append(f"the inference-aware model reaches the same loss with {out['total_flops_saving']:.1%} "
                     f"fewer total FLOPs")
    lines += [f"note: {n}" for n in out.get("notes", [])]
    return "\n".join(lines)
