"""The report's pictures: training curves, the confusion matrix, and what an unsupervised model found
(embeddings, reconstructions, samples, the elbow, anomaly scores).

Each function writes one PNG and returns its path. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

MAX_COLS = 3  # panels per row of curves.png


@dataclass
class Curve:
    """One run's series for one panel: training (per logged row) and validation points."""

    train: tuple[np.ndarray, np.ndarray] = (np.array([]), np.array([]))
    val: tuple[np.ndarray, np.ndarray] = (np.array([]), np.array([]))


@dataclass
class RunCurves:
    label: str
    curves: dict[str, Curve] = field(default_factory=dict)  # panel key -> series
    exported: int | None = None  # the step whose weights were exported


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    """Mean over a trailing window of up to n points (the per-step training loss is noisy)."""
    if len(v) == 0 or n <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    lo = np.maximum(np.arange(1, len(v) + 1) - n, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(v) + 1) - lo)


def log_axis(ax, values: np.ndarray) -> bool:
    """Put the y axis on a log scale with plain-number ticks (0.5, 1, 2, not only 10^0) when the values are
    positive and span more than a factor of 3; a narrower range stays linear (a log axis would show no tick).
    Returns whether the axis became logarithmic."""
    v = values[np.isfinite(values)]
    if len(v) == 0 or v.min() <= 0 or v.max() / v.min() <= 3:
        return False
    decades = math.log10(v.max() / v.min())
    subs = (np.arange(1.0, 10.0) if decades < 1 else (1.0, 2.0, 3.0, 5.0) if decades < 2
            else (1.0, 2.0, 5.0) if decades < 3.5 else (1.0,))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    plain = 1e-4 <= v.min() and v.max() < 1e6  # else 1e-05 reads better than 0.00001
    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}") if plain else ticker.LogFormatterSciNotation())
    ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(1.0, 10.0)))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


def losslike(key: str) -> bool:
    """Metrics drawn on a log axis when they span a wide range: losses and errors, not scores like accuracy."""
    k = key.lower()
    return k in ("loss", "ce", "nll", "mse", "mae", "rmse", "kl", "perplexity") or k.endswith(("_loss", "_mse", "_ce"))


def curves(runs: list[RunCurves], keys: list[str], path: Path, titles: dict[str, str] | None = None,
           note: str = "") -> Path:
    """One panel per key, wrapped into rows of at most MAX_COLS: training as a thin line (smoothed when long),
    validation as dashed points, one colour per run, a dotted vertical line at each run's exported step."""
    titles = titles or {}
    n = max(1, len(keys))
    cols = min(MAX_COLS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 3.7 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, key in enumerate(keys):
        ax = axes[j // cols][j % cols]
        seen = []
        for i, run in enumerate(runs):
            c, curve = colors[i % len(colors)], run.curves.get(key)
            if curve is None:
                continue
            st, v = curve.train
            if len(v):
                ax.plot(st, _smooth(v, max(1, len(v) // 50)), color=c, alpha=0.65, lw=1.1, label=f"{run.label} train")
                seen.append(v)
            st, v = curve.val
            if len(v):
                ax.plot(st, v, color=c, lw=1.8, ls="--", marker="o", ms=3.5, label=f"{run.label} val")
                seen.append(v)
            if run.exported is not None:
                ax.axvline(run.exported, color=c, ls=":", lw=1.3, alpha=0.9,
                           label=f"{run.label} exported (step {run.exported})")
        if seen and losslike(key):
            log_axis(ax, np.concatenate(seen))
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.set_title(titles.get(key, key), fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.12, which="minor")
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].axis("off")
    # The legend (runs: train, val, exported step) goes into an empty place of the grid, else below the panels,
    # so that it never hides a curve.
    handles, labels = axes[0][0].get_legend_handles_labels()
    note_h = 0.3 if note else 0.0  # inches below everything
    legend_h = 0.0
    if len(keys) < rows * cols:
        axes[-1][-1].legend(handles, labels, loc="center", fontsize=9, frameon=False)
    elif handles:
        per_row = 3 if len(runs) > 1 else len(handles)
        legend_h = 0.28 * math.ceil(len(handles) / per_row) + 0.1
    fig.set_figheight(fig.get_figheight() + note_h + legend_h)
    fig_h = fig.get_figheight()
    if legend_h:
        fig.legend(handles, labels, loc="lower center", ncol=per_row, fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, note_h / fig_h))
    if note:
        fig.text(0.01, 0.05 / fig_h, note, fontsize=8, ha="left", va="bottom", color="0.3")
    bottom = (note_h + legend_h) / fig_h
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(cm: list[list[int]], class_names: list[str], path: Path, title: str) -> Path:
    """Counts of (true class, predicted class), coloured by the share of each true class (its row), so that a
    rare class's mistakes show as strongly as a common one's."""
    m = np.asarray(cm, dtype=float)
    k = len(m)
    names = [str(s) for s in class_names][:k] + [str(i) for i in range(len(class_names), k)]
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(max(4.5, 0.55 * k + 2.5), 16)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (row)")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8 if k > 12 else 10,
                            color="white" if share[i, j] > 0.6 else "black")
    long = max((len(s) for s in names), default=0) > 3
    ax.set_xticks(range(k), names, rotation=45 if long else 0, ha="right" if long else "center", fontsize=9)
    ax.set_yticks(range(k), names, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _two_d(z: np.ndarray) -> tuple[np.ndarray, tuple[str, str], str]:
    """2-D coordinates, the axis labels, and a note for the title."""
    if z.shape[1] == 2:
        return z, ("dimension 1", "dimension 2"), ""
    if z.shape[1] == 1:
        return np.c_[z, np.zeros(len(z))], ("dimension 1", "(none: 1-D)"), ""
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=0).fit(z)
    r = pca.explained_variance_ratio_
    return pca.transform(z), (f"principal component 1 ({r[0]:.0%} of variance)",
                              f"principal component 2 ({r[1]:.0%} of variance)"), f" ({z.shape[1]}-D, first 2 PCs)"


def _palette(n: int) -> list:
    """Distinct colours: tab10 for up to 10 groups, else tab20 less its greys (noise is drawn as grey crosses)."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(10)]
    return [plt.get_cmap("tab20")(i) for i in range(20) if i not in (14, 15)]


def embedding(view, path: Path, title: str, class_names: list[str]) -> Path:
    """The representation in 2-D, coloured by cluster (found without labels) and by true class (if known),
    each panel with its legend (cluster numbers; class names) and axis labels."""
    xy, (xlabel, ylabel), note = _two_d(view.z)
    panels = [("clusters found", view.clusters, "cluster")]
    if view.y is not None:
        panels.append(("true class (not used to fit)", view.y, "class"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), 5.6), squeeze=False)
    for ax, (name, c, what) in zip(axes[0], panels):
        c = np.asarray(c).astype(int)
        values = np.unique(c)
        palette = _palette(int(values.max(initial=0)) + 1)
        for k in values:
            m = c == k
            if k < 0:  # DBSCAN's noise: grey crosses, a colour no cluster gets
                ax.scatter(xy[m, 0], xy[m, 1], s=10, marker="x", lw=0.8, color="0.7", label="noise (-1)")
                continue
            label = class_names[k] if what == "class" and class_names and k < len(class_names) else str(k)
            ax.scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.85, color=palette[k % len(palette)], label=label)
            if what == "class" and k >= 0 and len(values) <= 20:  # the class name at its centre, too
                ax.annotate(label, xy[m].mean(0), fontsize=11, weight="bold", ha="center", va="center",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.6})
        ax.set_title(f"{title}{note}: {name}", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(values) <= 20:
            ax.legend(fontsize=7, title=what if what == "class" else "cluster (-1 = noise)" if values.min() < 0
                      else "cluster", title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      markerscale=1.6, frameon=False)
        else:
            ax.text(0.99, 0.01, f"{len(values)} {what}es" if what == "class" else f"{len(values)} clusters",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(rows: list[tuple[str, np.ndarray]], shape: list[int], path: Path, title: str) -> Path:
    """Rows of images, each row a labelled (N, D) array of flattened images of `shape` (C, H, W)."""
    n = max(len(a) for _, a in rows)
    lo, hi = min(float(a.min()) for _, a in rows), max(float(a.max()) for _, a in rows)  # one scale for all
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0 + 0.4), squeeze=False)
    for r, (label, arr) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.axis("off")
            if i < len(arr):
                img = arr[i].reshape(shape)
                if shape[0] == 1:
                    ax.imshow(img[0], cmap="gray_r", vmin=lo, vmax=hi)
                else:
                    ax.imshow(np.clip((img.transpose(1, 2, 0) - lo) / (hi - lo + 1e-12), 0, 1))
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def vae_samples(model, shape: list[int], path: Path, seed: int, n: int = 12) -> Path:
    """Digits decoded from the prior: z ~ N(0, I), never encoded from any input."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = model.decode(torch.randn(2 * n, model.latent_dim, generator=g)).flatten(1).numpy()
    return image_grid([("samples from the prior", x[:n]), ("", x[n:])], shape, path, "VAE: decoded from z ~ N(0, I)")


def elbow(rows: list[dict], path: Path) -> Path:
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [r["inertia"] for r in rows], "o-", label="inertia")
    ax.set_xlabel("k (clusters)")
    ax.set_ylabel("inertia (sum of squared distances)")
    ax2 = ax.twinx()
    ax2.plot(ks, [r["silhouette"] for r in rows], "s--", color="C1", label="silhouette")
    ax2.set_ylabel("silhouette")
    ax.set_title("k-means: the elbow")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def anomaly_scores(view, anomaly_class: int, threshold: float, path: Path) -> Path:
    is_anomaly = view.y == anomaly_class
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.histogram_bin_edges(view.score, 40)
    ax.hist(view.score[~is_anomaly], bins, alpha=0.6, label="normal (classes seen in training)")
    ax.hist(view.score[is_anomaly], bins, alpha=0.6, label=f"anomaly (class {anomaly_class}, never seen)")
    ax.axvline(threshold, color="k", ls="--", label="threshold (chosen on validation)")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def returns(train: list[tuple[float, float]], val: list[tuple[float, float, float]], path: Path, title: str,
            val_label: str) -> Path:
    """An agent's episode return against environment steps: the training episodes' running mean (env steps,
    return) and the validation episodes (env steps, mean, std) with a band of one standard deviation."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        x, y = zip(*train)
        ax.plot(x, y, label="training episodes (mean of the last 100)", color="tab:blue", alpha=0.8)
    if val:
        x, y, s = map(np.asarray, zip(*val))
        ax.plot(x, y, "o-", label=val_label, color="tab:orange")
        ax.fill_between(x, y - s, y + s, color="tab:orange", alpha=0.2)
    ax.set(xlabel="environment steps", ylabel="episode return", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
