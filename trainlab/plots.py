"""Pictures of what an unsupervised model found: embeddings, reconstructions, samples, the elbow, anomaly scores.

Each function writes one PNG and returns its path. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _two_d(z: np.ndarray) -> tuple[np.ndarray, str]:
    if z.shape[1] == 2:
        return z, ""
    if z.shape[1] == 1:
        return np.c_[z, np.zeros(len(z))], ""
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(z), " (first 2 principal components)"


def embedding(view, path: Path, title: str, class_names: list[str]) -> Path:
    """The representation in 2-D, coloured by cluster (found without labels) and by true class (if known)."""
    xy, note = _two_d(view.z)
    panels = [("clusters found", view.clusters)] + ([("true class (not used to fit)", view.y)] if view.y is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], panels):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, cmap="tab10" if c.max() < 10 else "tab20", s=9, alpha=0.85)
        ax.set_title(f"{title}{note}: {name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if name.startswith("true") and class_names and len(class_names) <= 20:
            for k in np.unique(c):
                m = c == k
                ax.annotate(class_names[k], xy[m].mean(0), fontsize=12, weight="bold", ha="center")
        elif c.min() < 0:
            ax.legend(*sc.legend_elements(num=None), fontsize=6, title="cluster (-1 = noise)", loc="best")
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
