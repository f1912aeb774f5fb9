"""Fitting scaling laws to points: Kaplan et al.'s power laws, and Hoffmann et al.'s three approaches.

- `parametric`: approach 3, L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al. and Epoch AI did:
  Huber loss (delta 1e-3) between the log of the predicted and the observed loss, minimized from a grid of
  starts (they used L-BFGS; here BFGS, which for 5 parameters keeps the whole inverse Hessian), the best
  converged fit; standard errors from a bootstrap over the points.
- `frontier_fit`: approach 1, the lowest loss reached at each compute level over every run's training curve,
  and the size that reached it: N_opt ~ C^a, D_opt ~ C^b.
- `isoflop_fit`: approach 2, a parabola in log N through the final losses of the runs with one compute budget;
  its vertex is that budget's optimal size.
- `power_laws`: Kaplan's L(N), L(D), L(C) = (X_c / X)^alpha_X over the lower envelope of the points.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import stats

from trainlab.errors import UserError
from trainlab.scaling.law import KEYS, Law
from trainlab.scaling.points import Points

# Epoch AI's grid of starts (Besiroglu et al. 2024, following Hoffmann et al.'s appendix D.2):
# alpha, beta in 0..2 by 0.5; e = log E in -1..1 by 0.5; a = log A, b = log B in 0..25 by 5: 4,500 starts.
GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
        "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}


def _objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, delta: float):
    """Sum over points of Huber(log L_hat - log L), and its gradient, for S parameter vectors at once:
    theta (S, 5) = (a, b, e, alpha, beta) with log L_hat = LSE(a - alpha log N, b - beta log D, e)
    (Hoffmann et al., eq. D.2; A = exp(a), B = exp(b), E = exp(e)). Returns f (S,) and grad (S, 5)."""
    a, b, e, alpha, beta = (v[:, None] for v in theta.T)  # each (S, 1)
    terms = np.stack(np.broadcast_arrays(a - alpha * logn, b - beta * logd, e))  # (3, S, P)
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    s = w.sum(axis=0)
    r = top + np.log(s) - logl  # (S, P) residuals in log loss
    w /= s  # softmax weights: d log L_hat / d term_k
    small = np.abs(r) <= delta
    f = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)
    g = np.where(small, r, delta * np.sign(r))  # Huber's derivative, (S, P)
    grad = np.stack([(g * w[0]).sum(1), (g * w[1]).sum(1), (g * w[2]).sum(1),
                     -(g * w[0] * logn).sum(1), -(g * w[1] * logd).sum(1)], axis=1)
    return f, grad


def _minimize(starts: np.ndarray, args, max_iter: int = 1000, ftol: float = 1e-7, gtol: float = 1e-8):
    """BFGS with a backtracking (Armijo) line search, run for every start at once: Epoch's grid is 4,500
    independent small problems, and one vectorized pass over all of them costs what a few scalar ones do.
    Stops a start after 10 steps in a row that decrease f by a relative ftol or less, or when its largest gradient
    entry is <= gtol.
    Returns f (S,), theta (S, 5) and converged (S,)."""
    x = np.array(starts, float)
    s_count, dim = x.shape
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f, g = _objective(x, *args)
        h = np.tile(np.eye(dim), (s_count, 1, 1))  # inverse Hessian estimates (S, 5, 5)
        active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
        done = np.zeros(s_count, bool)
        calm = np.zeros(s_count, int)  # consecutive steps with a negligible decrease
        for it in range(max_iter):
            idx = np.flatnonzero(active & ~done)
            if not len(idx):
                break
            xi, fi, gi, hi = x[idx], f[idx], g[idx], h[idx]
            d = -np.einsum("sij,sj->si", hi, gi)
            slope = (gi * d).sum(1)
            bad = ~(slope < 0)  # not a descent direction: restart from steepest descent
            d[bad], hi[bad] = -gi[bad], np.eye(dim)
            slope = (gi * d).sum(1)
            t = np.ones(len(idx))
            fn, gn, xn = fi.copy(), gi.copy(), xi.copy()
            pending = np.ones(len(idx), bool)
            for _ in range(40):  # halve the step until it decreases f enough (Armijo, c1 = 1e-4)
                p = np.flatnonzero(pending)
                if not len(p):
                    break
                xt = xi[p] + t[p, None] * d[p]
                ft, gt = _objective(xt, *args)
                ok = np.isfinite(ft) & (ft <= fi[p] + 1e-4 * t[p] * slope[p])
                q = p[ok]
                fn[q], gn[q], xn[q] = ft[ok], gt[ok], xt[ok]
                pending[q] = False
                t[p[~ok]] *= 0.5
            step, y = xn - xi, gn - gi
            sy = (step * y).sum(1)
            upd = sy > 1e-12
            if it == 0:  # scale the first estimate to the curvature seen (Nocedal & Wright, eq. 6.20)
                yy = (y * y).sum(1)
                hi[upd] *= (sy[upd] / yy[upd])[:, None, None]
            rho = np.where(upd, 1 / np.where(upd, sy, 1), 0)
            eye = np.eye(dim)[None]
            left = eye - rho[:, None, None] * step[:, :, None] * y[:, None, :]
            new_h = left @ hi @ left.transpose(0, 2, 1) + rho[:, None, None] * step[:, :, None] * step[:, None, :]
            hi = np.where(upd[:, None, None], new_h, hi)
            stuck = pending  # no step decreased f: at a minimum to this precision
            # Relative decrease (the objective is a sum of Huber terms of size ~delta^2: no floor at 1 as in
            # scipy), on 10 steps in a row: a start at an old optimum (the bootstrap's) creeps before it moves.
            small = (fi - fn) <= ftol * np.maximum(np.abs(fi), 1e-300)
            calm[idx] = np.where(small, calm[idx] + 1, 0)
            x[idx], f[idx], g[idx], h[idx] = xn, fn, gn, hi
            done[idx] = stuck | (calm[idx] >= 10) | (np.abs(gn).max(1) <= gtol)
    converged = done & np.isfinite(f) & np.all(np.isfinite(x), axis=1)
    return f, x, converged


def _law(theta: np.ndarray, source: str, se: dict | None = None) -> Law:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return Law(_exp(e), _exp(a), _exp(b), alpha, beta, source=source, se=se or {})


def parametric(points: Points, delta: float = 1e-3, bootstrap: int = 0, seed: int = 0,
               grid: dict | None = None) -> tuple[Law, dict]:
    """Approach 3 on the final points. Returns the law (with bootstrap standard errors when bootstrap > 0) and
    a dict of diagnostics: points, starts, converged starts, objective."""
    p = points.finals()
    if len(p) < 6:
        raise UserError(f"fitting L(N, D) = E + A/N^alpha + B/D^beta (5 numbers) needs at least 6 points; "
                        f"got {len(p)}", "train more sizes or token budgets (trainlab scaling sweep)")
    if len(np.unique(p.params)) < 2 or len(np.unique(p.tokens)) < 2:
        what = "size" if len(np.unique(p.params)) < 2 else "token budget"
        raise UserError(f"every point has the same {what}: loss cannot be split into a part that falls with "
                        "parameters and a part that falls with tokens", "add points with other sizes and budgets")
    args = (np.log(p.params), np.log(p.tokens), np.log(p.loss), delta)
    g = grid or GRID
    starts = np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])))
    f, x, ok = _minimize(starts, args)
    if not ok.any():
        raise UserError(f"the fit did not converge from any of {len(starts)} starts",
                        "check the points (a loss that rises with size or tokens cannot be fitted by this law)")
    order = np.flatnonzero(ok)[np.argsort(f[ok])]
    best = x[order[0]]
    _check(best, p)
    info = {"points": len(p), "starts": len(starts), "converged": int(ok.sum()), "objective": float(f[order[0]]),
            "delta": delta}
    se = {}
    if bootstrap:
        # Refit each resample from the best optimum and the next few distinct ones (the objective has several).
        seeds = np.array([best] + [x[i] for i in order[1:200] if np.abs(x[i] - best).max() > 1e-2][:4])
        rng = np.random.default_rng(seed)
        fits = []
        for _ in range(bootstrap):
            i = rng.integers(0, len(p), len(p))
            fb, xb, okb = _minimize(seeds, (args[0][i], args[1][i], args[2][i], delta))
            if okb.any():
                t = xb[np.flatnonzero(okb)[np.argmin(fb[okb])]]
                if _degenerate(t) is None and max(t[:3]) < 700:  # a resample that lost a term is not a fit
                    fits.append(_law(t, ""))
        if len(fits) >= 2:
            se = {k: float(np.std([getattr(f, k) for f in fits], ddof=1)) for k in KEYS}
        info["bootstrap"] = {"resamples": bootstrap, "converged": len(fits)}
    law = _law(best, f"fit of {len(p)} points from {points.source or 'a sweep'} (N: {points.params_are})", se)
    fitted = {k: [float(v.min()), float(v.max())] for k, v in (("params", p.params), ("tokens", p.tokens),
                                                                ("flops", p.flops))}
    return dataclasses.replace(law, fitted=fitted), info


def _degenerate(theta: np.ndarray) -> tuple[str, float, str] | None:
    """A converged fit can still be degenerate: an exponent at zero means that term is a constant folded into E
    (the points cannot separate them), a huge one means the term vanishes within the data."""
    for name, v, what in (("alpha", theta[3], "size"), ("beta", theta[4], "tokens")):
        if not 1e-3 < v < 5:
            return name, float(v), what
    return None


def _check(theta: np.ndarray, p: Points) -> None:
    bad = _degenerate(theta)
    if bad:
        name, v, what = bad
        x = p.params if what == "size" else p.tokens
        wide = len(np.unique(x)) >= 3 and x.max() >= 10 * x.min()
        raise UserError(f"the fit is degenerate: {name} = {v:.3g}, so loss does not follow a power law in "
                        f"{what} over these {len(p)} points",
                        f"its {len(np.unique(x))} values span {x.max() / x.min():.3g}x: at this scale the runs may be "
                        f"too short or too noisy for the law; train longer or larger runs" if wide else
                        f"widen the range of {what} (at least 3 values, spread over a factor of 10 or more)")
    if max(theta[:3]) >= 700:
        raise UserError(f"the fit is degenerate: a constant of the law is past the float range over these {len(p)} "
                        "points", "add points that span more sizes and token budgets")


def _ols(x: np.ndarray, y: np.ndarray) -> dict:
    """y = c + k x by least squares (scipy's linregress), with the slope's 95% confidence interval (Student's t,
    n - 2 degrees of freedom; none from 2 points)."""
    n = len(x)
    f = stats.linregress(x, y)
    half = float(stats.t.ppf(0.975, n - 2)) * f.stderr if n > 2 else math.nan
    return {"slope": float(f.slope), "intercept": float(f.intercept), "ci95": [f.slope - half, f.slope + half],
            "r2": float(f.rvalue**2), "points": n}


def _envelope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the frontier, by x: at each distinct x its lowest y, kept when it is below the y of every
    smaller x (one size's undertrained budgets are not points of L(N))."""
    keep, best = [], math.inf
    for v in np.unique(x):
        at = np.flatnonzero(x == v)
        i = at[np.argmin(y[at])]
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.array(keep, int)


def _exp(v: float) -> float:
    """exp(v), infinity past the float range (printed as null in JSON), never an OverflowError."""
    return math.exp(v) if v < 709 else math.inf


def power_laws(points: Points) -> dict:
    """Kaplan et al. (2020): L(X) = (X_c / X)^alpha_X for X = N, D, C, each over the lower envelope (the best
    loss reached with at most that much of X; C over every point of the training curves)."""
    out = {}
    finals = points.finals()
    for name, x, y in (("N", finals.params, finals.loss), ("D", finals.tokens, finals.loss),
                       ("C", points.flops, points.loss)):
        i = _envelope(x, y)
        if len(np.unique(x[i])) < 3:
            out[name] = {"skipped": f"needs 3 or more points on the frontier in {name}; got {len(i)}"}
            continue
        f = _ols(np.log(x[i]), np.log(y[i]))
        alpha = -f["slope"]  # log L = alpha log X_c - alpha log X
        out[name] = {"alpha": alpha, "ci95": sorted([-f["ci95"][0], -f["ci95"][1]]),
                     "x_c": _exp(f["intercept"] / alpha) if alpha > 0 else math.nan,
                     "r2": f["r2"], "points": f["points"]}
    return out


def _exponents(c: np.ndarray, n: np.ndarray) -> dict:
    """N_opt ~ C^a and D_opt = C / (6 N_opt) ~ C^b, b = 1 - a: the slope of log N_opt on log C."""
    f = _ols(np.log(c), np.log(n))
    return {"a": f["slope"], "a_ci95": f["ci95"], "b": 1 - f["slope"], "r2": f["r2"], "levels": f["points"],
            "k": float(math.exp(f["intercept"]))}  # N_opt = k C^a


def frontier_fit(points: Points, levels: int = 12) -> dict:
    """Approach 1: at each of `levels` compute budgets (log-spaced over the range where 2 or more curves overlap),
    the run whose training curve is lowest there; the fit of its N against C."""
    runs = sorted(set(points.run))
    if len(runs) < 2 or not all(runs):
        return {"skipped": "needs the training curves of 2 or more runs (a sweep's points.csv)"}
    curves = {}
    for r in runs:
        sel = np.array([x == r for x in points.run])
        order = np.argsort(points.flops[sel])
        curves[r] = (np.log(points.flops[sel][order]), np.log(points.loss[sel][order]), points.params[sel][0])
    # Levels where 2 or more curves overlap: at the ends of the range one lone curve would win by default.
    starts = sorted(c[0][0] for c in curves.values())
    ends = sorted((c[0][-1] for c in curves.values()), reverse=True)
    lo, hi = starts[1], ends[1]
    if not lo < hi:
        return {"skipped": "no two training curves share a range of compute"}
    table = []
    for logc in np.linspace(lo, hi, levels):
        best = min(((np.interp(logc, xs, ys), n) for xs, ys, n in curves.values() if xs[0] <= logc <= xs[-1]),
                   default=None, key=lambda t: t[0])
        if best is not None:
            table.append((math.exp(logc), best[1], math.exp(best[0])))
    sizes = {n for _, n, _ in table}
    if len(table) < 3 or len(sizes) < 2:
        return {"skipped": f"the frontier is made of {len(sizes)} size(s) at {len(table)} compute levels: "
                           "no trend in N_opt"}
    c, n, loss = (np.array(v) for v in zip(*table))
    return {**_exponents(c, n), "frontier": [{"flops": float(a), "params": float(b), "loss": float(l)}
                                             for a, b, l in table]}


def isoflop_groups(points: Points, tol: float = 0.15) -> list[np.ndarray]:
    """Final points grouped by compute: budgets within `tol` in log10 of each other are one IsoFLOP profile."""
    p = points.finals()
    order = np.argsort(p.flops)
    groups, cur = [], [order[0]] if len(order) else []
    for i in order[1:]:
        if math.log10(p.flops[i]) - math.log10(p.flops[cur[0]]) <= tol:
            cur.append(i)
        else:
            groups.append(np.array(cur))
            cur = [i]
    if cur:
        groups.append(np.array(cur))
    return groups


def isoflop_fit(points: Points) -> dict:
    """Approach 2: per compute budget with 3 or more sizes, loss = k2 (log N)^2 + k1 log N + k0; the vertex
    N* = exp(-k1 / (2 k2)) is that budget's optimal size (a profile that is not convex has none)."""
    p = points.finals()
    profiles, notes = [], []
    for g in isoflop_groups(points):
        if len(np.unique(p.params[g])) < 3:
            continue
        x, y = np.log(p.params[g]), p.loss[g]
        k2, k1, k0 = np.polyfit(x, y, 2)
        c = float(np.exp(np.log(p.flops[g]).mean()))
        if k2 <= 0:
            notes.append(f"the profile at {c:.2g} FLOPs is not convex (no minimum)")
            continue
        x_opt = -k1 / (2 * k2)
        inside = bool(x.min() <= x_opt <= x.max())
        profiles.append({"flops": c, "params_opt": _exp(x_opt), "loss_opt": float(k0 - k1**2 / (4 * k2)),
                         "inside": bool(inside), "sizes": [float(v) for v in p.params[g]],
                         "losses": [float(v) for v in y], "parabola": [float(k2), float(k1), float(k0)]})
        if not inside:
            notes.append(f"the profile at {c:.2g} FLOPs has its minimum outside the sizes trained: left out")
    used = [q for q in profiles if q["inside"]]
    if len(used) < 2:
        return {"skipped": f"needs 2 or more IsoFLOP profiles with 3 sizes each and their minimum among them; "
                           f"got {len(used)}", "profiles": profiles, "notes": notes}
    c = np.array([q["flops"] for q in used])
    n = np.array([q["params_opt"] for q in used])
    return {**_exponents(c, n), "profiles": profiles, "notes": notes}


def fit_all(points: Points, bootstrap: int = 0, seed: int = 0, delta: float = 1e-3) -> dict:
    """Every fit the points allow: the parametric law and the approaches and power laws that have enough points
    (the others say why they were skipped). Points that determine none of them are a UserError (the parametric
    law's reason); where only the parametric law fails, the rest is still the answer, with the reason under
    "parametric" and no E, A, B, alpha, beta."""
    others = {"approach1": frontier_fit(points), "approach2": isoflop_fit(points), "kaplan": power_laws(points)}
    try:
        law, info = parametric(points, delta=delta, bootstrap=bootstrap, seed=seed)
    except UserError as e:
        parts = [others["approach1"], others["approach2"], *others["kaplan"].values()]
        if all("skipped" in x for x in parts):
            raise
        reason = e.message + (f"; {e.hint}" if e.hint else "")
        return {"parametric": {"skipped": reason}, "source": f"{points.source or 'a sweep'} (N: {points.params_are})",
                "fit": {"points": len(points.finals())}, "approach3": {"skipped": "no parametric law"},
                "notes": [f"L(N, D) not fitted: {reason}"], **others}
    a, b = law.exponents
    notes = []
    if law.E < 1e-3 * float(points.loss.min()):
        notes.append("E fell to 0: these losses are far above any floor, and the fit folds the irreducible loss "
                     "into A / N^alpha (it cannot be told apart at this scale)")
    notes += [f"{k} is not determined by these points (its standard error {law.se[k]:.3g} exceeds it)"
              for k in KEYS if k in law.se and law.se[k] > abs(getattr(law, k))]
    return {**{k: getattr(law, k) for k in KEYS}, "se": law.se, "source": law.source, "fitted": law.fitted,
            "fit": info, "notes": notes, "approach3": {"a": a, "b": b}, **others}
