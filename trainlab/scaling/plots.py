"""The scaling plots: loss against compute with the frontier, IsoFLOP profiles with their minima, the fitted
N_opt(C) and D_opt(C) beside the published exponents, and predicted against measured loss. One PNG each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainlab.plots import plt
from trainlab.scaling.law import PUBLISHED_EXPONENTS, Law
from trainlab.scaling.points import Points


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_vs_compute(p: Points, result: dict, path: Path) -> Path:
    """Every run's validation curve against 6 N D, coloured by size (log scale); the lowest loss per compute
    (approach 1's frontier) and Kaplan's L(C) fit over it."""
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    norm, cmap = LogNorm(p.params.min(), max(p.params.max(), p.params.min() * 1.01)), plt.get_cmap("viridis")
    for r in sorted(set(p.run) - {""}):  # a table of published points has no curves
        sel = np.array([x == r for x in p.run])
        o = np.argsort(p.flops[sel])
        ax.plot(p.flops[sel][o], p.loss[sel][o], "-", lw=1, alpha=0.8, color=cmap(norm(p.params[sel][0])))
    f = p.finals()
    sc = ax.scatter(f.flops, f.loss, c=f.params, cmap=cmap, norm=norm, s=18, zorder=3)
    front = result.get("approach1", {}).get("frontier")
    if front:
        ax.plot([q["flops"] for q in front], [q["loss"] for q in front], "k--", lw=1.2, label="frontier (approach 1)")
    k = result.get("kaplan", {}).get("C", {})
    if "alpha" in k and np.isfinite(k["x_c"]):
        c = np.geomspace(p.flops.min(), p.flops.max(), 50)
        ax.plot(c, (k["x_c"] / c) ** k["alpha"], "r:", lw=1.5, label=f"L(C) ~ C^-{k['alpha']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs (6 N D)", ylabel="validation loss (nats/token)",
           title="Loss against compute")
    fig.colorbar(sc, ax=ax).set_label(f"N ({p.params_are})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def isoflops(result: dict, path: Path) -> Path:
    """Approach 2: each compute budget's losses against size, its parabola and its minimum."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    profiles = result.get("approach2", {}).get("profiles", [])
    cmap = plt.get_cmap("plasma")
    for i, q in enumerate(profiles):
        color = cmap(i / max(1, len(profiles)))
        ax.scatter(q["sizes"], q["losses"], color=color, s=18, label=f"C = {q['flops']:.2g}")
        x = np.linspace(np.log(min(q["sizes"])), np.log(max(q["sizes"])), 50)
        k2, k1, k0 = q["parabola"]
        ax.plot(np.exp(x), k2 * x**2 + k1 * x + k0, "-", color=color, lw=1)
        ax.plot([q["params_opt"]], [q["loss_opt"]], "kx" if q["inside"] else "k+", ms=8)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final validation loss",
           title="IsoFLOP profiles (x: each budget's optimal N)")
    if profiles:
        ax.legend(fontsize=8)
    return _save(fig, path)


def optimal_allocation(result: dict, path: Path) -> Path:
    """N_opt(C) and D_opt(C): this fit's approaches beside Kaplan's and Chinchilla's published exponents, each
    line drawn through this fit's allocation at the middle of the compute range (the slopes are what compare)."""
    law = Law.from_dict(result) if "E" in result else None  # the parametric law may be left out (see fit_all)
    c_lo, c_hi = _compute_range(result)
    c = np.geomspace(c_lo, c_hi, 50)
    mid = np.sqrt(c_lo * c_hi)
    if law:
        n3 = np.array([law.optimal(x)[0] for x in c])
        n_mid = law.optimal(mid)[0]
    else:
        a = next(result[k] for k in ("approach1", "approach2") if "a" in result.get(k, {}))
        n_mid = a["k"] * mid ** a["a"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, what in zip(axes, ("N", "D")):
        if law:
            y3 = n3 if what == "N" else c / (6 * n3)
            ax.plot(c, y3, "k-", lw=2, label=f"this fit, approach 3 ({law.exponents[0 if what == 'N' else 1]:.2f})")
        for i, style in ((1, "o"), (2, "s")):
            a = result.get(f"approach{i}", {})
            if "a" in a:
                y = a["k"] * c ** a["a"]
                ax.plot(c, y if what == "N" else c / (6 * y), "--", lw=1.5,
                        label=f"this fit, approach {i} ({a['a'] if what == 'N' else a['b']:.2f})")
        y_mid = n_mid if what == "N" else mid / (6 * n_mid)
        for name, (ea, eb) in PUBLISHED_EXPONENTS.items():
            e = ea if what == "N" else eb
            ax.plot(c, y_mid * (c / mid) ** e, ":", lw=1, label=f"{name} ({e:.2f})")
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs C",
               ylabel="optimal parameters N_opt" if what == "N" else "optimal tokens D_opt",
               title=f"{what}_opt against compute")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _compute_range(result: dict) -> tuple[float, float]:
    front = result.get("approach1", {}).get("frontier") or []
    profiles = result.get("approach2", {}).get("profiles") or []
    cs = [q["flops"] for q in front] + [q["flops"] for q in profiles]
    return (min(cs), max(cs)) if cs else (1e12, 1e15)


def predicted_vs_actual(rows: list[dict], path: Path) -> Path:
    """rows: {"label", "predicted", "actual", "held_out"}: the law's loss against the measured one."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    a = np.array([r["actual"] for r in rows])
    pr = np.array([r["predicted"] for r in rows])
    held = np.array([bool(r.get("held_out")) for r in rows])
    ax.scatter(a[~held], pr[~held], s=16, color="tab:blue", label="fitted runs")
    if held.any():
        ax.scatter(a[held], pr[held], s=50, marker="*", color="tab:red", label="left out of the fit")
    for r in rows:
        if r.get("held_out"):
            ax.annotate(f"{r['label']}: {100 * (r['predicted'] / r['actual'] - 1):+.1f}%",
                        (r["actual"], r["predicted"]), fontsize=8, xytext=(5, -12), textcoords="offset points")
    lo, hi = min(a.min(), pr.min()), max(a.max(), pr.max())
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax.set(xlabel="measured validation loss", ylabel="predicted by L(N, D)", title="Prediction")
    ax.legend(fontsize=8)
    return _save(fig, path)


def prediction_rows(law: Law, p: Points, held=()) -> list[dict]:
    """predicted_vs_actual's rows for the final points of p; `held`: indices of those left out of the fit."""
    f = p.finals()
    return [{"label": f.run[i] or f"N {f.params[i]:.3g}, D {f.tokens[i]:.3g}",
             "predicted": law.loss(f.params[i], f.tokens[i]), "actual": f.loss[i], "held_out": i in held}
            for i in range(len(f))]


def write_all(p: Points, result: dict, out: Path, held: list[int] | tuple = ()) -> list[Path]:
    """The fit's plots into `out`; `held`: indices of p's final points left out of the fit (predicted by it)."""
    out = Path(out)
    paths = [loss_vs_compute(p, result, out / "scaling_loss_vs_compute.png")]
    if result.get("approach2", {}).get("profiles"):
        paths.append(isoflops(result, out / "scaling_isoflops.png"))
    if "E" in result or any("a" in result.get(k, {}) for k in ("approach1", "approach2")):
        paths.append(optimal_allocation(result, out / "scaling_optimal_allocation.png"))
    if "E" in result:
        paths.append(predicted_vs_actual(prediction_rows(Law.from_dict(result), p, held), out / "scaling_prediction.png"))
    return paths
