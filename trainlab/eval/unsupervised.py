"""Evaluating what an unsupervised model found: harder than scoring a classifier, so every number says
whether it needed labels.

Without labels: silhouette (how well separated the clusters are in the model's own representation),
inertia, reconstruction error, the VAE's ELBO, trustworthiness of an embedding (are near neighbours kept).
With held-back labels, where the data has them: adjusted Rand index (`ari`) and normalized mutual information
(`nmi`) of the clusters against the true classes; for anomaly detection, ROC AUC and precision/recall at a
threshold chosen on the validation split.

Methods without clusters of their own (PCA, t-SNE, UMAP, autoencoders, VAEs) are clustered by k-means with
model.n_clusters, fitted on the training split's representation.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.cluster import KMeans

LABEL_METRICS = ("ari", "nmi", "roc_auc", "average_precision", "precision", "recall", "f1", "threshold")


@dataclass
class View:
    """What a model makes of one split."""

    x: np.ndarray  # (N, D) inputs, flattened
    y: np.ndarray | None  # (N,) true classes, None for unlabelled data
    z: np.ndarray  # (N, d) the representation clustering and plots use
    recon: np.ndarray | None = None  # (N, D)
    score: np.ndarray | None = None  # (N,) anomaly score, higher = stranger
    clusters: np.ndarray | None = None  # (N,), -1 = noise


def make_view(model, info: dict, data, split: str) -> View:
    s = data.splits[split]
    x = s.x.flatten(1).numpy()
    y = s.y.numpy() if info["task"] == "classification" else None
    if isinstance(model, torch.nn.Module):
        codes, recons = [], []
        with torch.no_grad():
            for batch in data.eval_batches(split):
                mu = model.encode(batch["x"])[0]
                codes.append(mu)
                recons.append(model.decode(mu).flatten(1))
        recon = torch.cat(recons).numpy()
        return View(x, y, torch.cat(codes).numpy(), recon, ((recon - x) ** 2).mean(1))
    return View(x, y, model.embed(x), model.reconstruct(x), model.score(x), model.clusters(x))


def cluster(views: dict[str, View], k: int, seed: int) -> None:
    """Give every view clusters: the model's own, or k-means fitted on the training representation."""
    if views["train"].clusters is not None:
        return
    km = KMeans(k, n_init=10, random_state=seed).fit(views["train"].z)
    for v in views.values():
        v.clusters = km.predict(v.z)


def cluster_metrics(z: np.ndarray, clusters: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if y is not None:
        out["ari"] = float(skm.adjusted_rand_score(y, clusters))
        out["nmi"] = float(skm.normalized_mutual_info_score(y, clusters))
    kept = clusters >= 0  # DBSCAN's noise belongs to no cluster
    found = len(np.unique(clusters[kept]))
    if 2 <= found < kept.sum():
        out["silhouette"] = float(skm.silhouette_score(z[kept], clusters[kept]))
    out["clusters_found"] = float(found)
    return out


def best_f1_threshold(score: np.ndarray, is_anomaly: np.ndarray) -> float:
    """The score threshold with the highest F1 for 'anomaly' on these (validation) examples."""
    p, r, t = skm.precision_recall_curve(is_anomaly, score)
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    return float(t[np.argmax(f1[:-1])]) if len(t) else float(score.max())


def anomaly_metrics(score: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    pred = score >= threshold
    p, r, f, _ = skm.precision_recall_fscore_support(is_anomaly, pred, average="binary", zero_division=0)
    both = len(np.unique(is_anomaly)) == 2
    return {"roc_auc": float(skm.roc_auc_score(is_anomaly, score)) if both else float("nan"),
            "average_precision": float(skm.average_precision_score(is_anomaly, score)) if both else float("nan"),
            "precision": float(p), "recall": float(r), "f1": float(f), "threshold": float(threshold)}


def clustered_views(model, info: dict, cfg, data, split: str) -> dict[str, View]:
    """Views of the training split (to fit clusters and normalize), `split`, and validation (thresholds)."""
    names = ["train", split] + (["val"] if split != "val" else [])
    views = {s: make_view(model, info, data, s) for s in names}
    cluster(views, cfg.model.n_clusters, cfg.run.seed)
    return views


def evaluate(model, info: dict, cfg, data, split: str, views: dict[str, View] | None = None) -> dict:
    seed = cfg.run.seed
    views = views or clustered_views(model, info, cfg, data, split)
    v = views[split]
    m = cluster_metrics(v.z, v.clusters, v.y)
    if cfg.model.kind == "kmeans":
        m["inertia"] = float(((v.x - model.arrays["centers"][v.clusters]) ** 2).sum())
    if v.recon is not None:
        m["recon_mse"] = float(((v.recon - v.x) ** 2).mean())
    if cfg.model.kind == "vae":
        m.update(_elbo(model, cfg, data, split))
    if v.z.shape[1] < v.x.shape[1] and len(v.x) > 12:
        m["trustworthiness"] = float(_trustworthiness(v.x, v.z))

    base_name, base = _baseline(cfg, views, split, seed)
    anomaly = info.get("anomaly_class", -1)
    if anomaly >= 0 and v.score is not None:
        val = views["val"]
        m.update(anomaly_metrics(v.score, v.y == anomaly, best_f1_threshold(val.score, val.y == anomaly)))
        mean = views["train"].x.mean(0)
        dist = {s: np.sqrt(((views[s].x - mean) ** 2).sum(1)) for s in ("val", split)}
        base.update(anomaly_metrics(dist[split], v.y == anomaly, best_f1_threshold(dist["val"], val.y == anomaly)))
        base_name += "; anomaly score: distance to the training mean"
    return {"split": split, "n": int(len(v.x)), "task": "unsupervised", "method": cfg.model.kind, "metrics": m,
            "baseline": {"name": base_name, **base}, "labels_used": [k for k in m if k in LABEL_METRICS]}


def _baseline(cfg, views: dict[str, View], split: str, seed: int) -> tuple[str, dict]:
    v = views[split]
    k = cfg.model.n_clusters
    if cfg.model.kind == "kmeans":
        rand = np.random.default_rng(seed).integers(0, k, len(v.x))
        return f"random partition into {k} clusters", cluster_metrics(v.x, rand, v.y)
    km = KMeans(k, n_init=10, random_state=seed).fit(views["train"].x)
    return f"k-means (k={k}) on the raw inputs", cluster_metrics(v.x, km.predict(v.x), v.y)


def _trustworthiness(x: np.ndarray, z: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return trustworthiness(x, z, n_neighbors=min(5, len(x) // 2 - 1))


def _elbo(model, cfg, data, split: str) -> dict[str, float]:
    from trainlab.policy import evaluate as loop_evaluate
    from trainlab.objectives import LossModule
    from trainlab.objectives.unsupervised import ELBO

    torch.manual_seed(cfg.run.seed)  # the ELBO is a one-sample estimate: fix the sample
    out = loop_evaluate(LossModule(model, ELBO()), data.eval_batches(split), torch.device("cpu"), nullcontext())
    return {"elbo": out["elbo"], "kl": out["kl"]}

