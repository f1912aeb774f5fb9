"""Classical unsupervised methods, fitted by their standard implementations (scikit-learn, umap-learn) and
stored without pickle: every fitted model is a few named arrays (model.safetensors) plus JSON parameters.

    m = fit(cfg.model, x_train, seed)     x: (N, D) float32
    m.clusters(x)   cluster per row (-1 = noise), or None for a pure embedding
    m.embed(x)      the representation clustering and plots use: (N, n_components), or x itself
    m.reconstruct(x), m.score(x)          where the method has them (PCA; k-means, DBSCAN, PCA)

t-SNE has no transform for new points, and UMAP's fitted state cannot be stored without pickle; both keep
their training embedding and map a new point to the inverse-distance-weighted mean of the embeddings of its
n_neighbors nearest training points (a training point maps to its own embedding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from typing import Literal

from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import ModelTable, ObjectiveTable
from trainlab.errors import UserError


class _Clustered(ModelTable):
    n_clusters: int = Field(10, ge=2)  # k-means on the representation (and the k-means baseline) uses this k


class KMeansConfig(_Clustered):
    kind: Literal["kmeans"] = "kmeans"
    elbow_max_k: int = Field(0, ge=0)  # also fit k = 2..elbow_max_k for the elbow plot (0 = skip)


class DBSCANConfig(_Clustered):
    kind: Literal["dbscan"] = "dbscan"
    eps: float = Field(0.5, gt=0)  # neighbourhood radius (in standardized units)
    min_samples: PositiveInt = 5  # neighbours that make a core point


class PCAConfig(_Clustered):
    kind: Literal["pca"] = "pca"
    n_components: int = Field(2, ge=1)  # dimensions of the projection


class TSNEConfig(_Clustered):
    kind: Literal["tsne"] = "tsne"
    n_components: int = Field(2, ge=1)
    perplexity: float = Field(30.0, gt=0)
    n_neighbors: int = Field(15, ge=2)  # the nearest training points that embed a new point


class UMAPConfig(_Clustered):
    kind: Literal["umap"] = "umap"
    n_components: int = Field(2, ge=1)
    n_neighbors: int = Field(15, ge=2)  # UMAP's own; also the k of the map that embeds new points
    min_dist: float = Field(0.1, ge=0)


class NoObjective(ObjectiveTable):
    """Models fitted in one call have no objective for the loop to minimize."""

    kind: Literal["none"] = "none"


@registry.objective("none", NoObjective)
def _no_objective(cfg: NoObjective, info: dict):
    """No objective: for models fitted in one call (kmeans, dbscan, pca, tsne, umap)."""
    raise UserError("objective.kind = 'none' is for models fitted in one call (kmeans, dbscan, pca, tsne, umap)",
                    "set objective.kind = 'auto'")


class Classical:
    def __init__(self, kind: str, arrays: dict[str, np.ndarray], params: dict):
        self.kind, self.arrays, self.params = kind, arrays, params
        self._nn = None  # a fitted sklearn NearestNeighbors, made on first use

    # ------------------------------------------------------------------------------- what a fit gives
    def clusters(self, x: np.ndarray) -> np.ndarray | None:
        if self.kind == "kmeans":
            return _sq_dist(x, self.arrays["centers"]).argmin(1)
        if self.kind == "dbscan":
            core, labels = self.arrays["core"], self.arrays["core_labels"]
            if len(core) == 0:
                return np.full(len(x), -1)
            d, i = self._neighbors(core, 1).kneighbors(x)
            # A point joins the cluster of its nearest core point when within eps, like DBSCAN's own border points.
            return np.where(d[:, 0] <= self.params["eps"], labels[i[:, 0]], -1)
        return None

    def embed(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "pca":
            return (x - self.arrays["mean"]) @ self.arrays["components"].T
        if self.kind in ("tsne", "umap"):
            train_x, train_e = self.arrays["train_x"], self.arrays["train_embedding"]
            k = min(self.params["n_neighbors"], len(train_x))
            d, i = self._neighbors(train_x, k).kneighbors(x)
            w = 1.0 / np.maximum(d, 1e-12)  # a training point (d = 0) takes its own embedding
            return (w[:, :, None] * train_e[i]).sum(1) / w.sum(1, keepdims=True)
        return x

    def reconstruct(self, x: np.ndarray) -> np.ndarray | None:
        if self.kind == "pca":
            return self.embed(x) @ self.arrays["components"] + self.arrays["mean"]
        return None

    def score(self, x: np.ndarray) -> np.ndarray | None:
        """Anomaly score: higher = stranger."""
        if self.kind == "kmeans":
            return np.sqrt(_sq_dist(x, self.arrays["centers"]).min(1))
        if self.kind == "dbscan":
            if len(self.arrays["core"]) == 0:
                return np.zeros(len(x))
            return self._neighbors(self.arrays["core"], 1).kneighbors(x)[0][:, 0]
        if self.kind == "pca":
            return ((self.reconstruct(x) - x) ** 2).mean(1)
        return None

    def num_parameters(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))

    def _neighbors(self, ref: np.ndarray, k: int):
        from sklearn.neighbors import NearestNeighbors  # scikit-learn is imported on first use: start-up stays fast

        if self._nn is None or self._nn.n_neighbors != k or self._nn.n_samples_fit_ != len(ref):
            self._nn = NearestNeighbors(n_neighbors=k).fit(ref)
        return self._nn

    # ------------------------------------------------------------------------------- storage
    def save(self, model_dir: Path, model_cfg: ModelTable, info: dict) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(model_dir / "model.safetensors"))
        meta = {"model": model_cfg.model_dump(mode="json"), "info": info, "params": self.params}
        (model_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(model_dir: Path) -> Classical:
    meta = json.loads((model_dir / "config.json").read_text())
    try:
        arrays = load_file(str(model_dir / "model.safetensors"))
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{model_dir / 'model.safetensors'} cannot be loaded: {e}", "the file is damaged; refit") from None
    return Classical(meta["model"]["kind"], arrays, meta["params"])


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (N, K) by ||x||^2 - 2 x.c + ||c||^2."""
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], 0.0)


def fit(cfg: ModelTable, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """Fit the method on the training inputs; return it and what the fit itself measured."""
    return registry.get("model", cfg.kind).build(cfg, x, seed)


_FITTED = dict(consumes={"features"}, produces={"codes"}, fitted=True)


@registry.model("kmeans", KMeansConfig, **_FITTED)
def fit_kmeans(cfg: KMeansConfig, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """k-means (scikit-learn): k clusters, anomaly score = distance to the nearest centre."""
    from sklearn.cluster import KMeans

    n = len(x)
    if n < cfg.n_clusters:
        raise UserError(f"k-means with model.n_clusters = {cfg.n_clusters} needs at least that many training "
                        f"examples; got {n}", "lower model.n_clusters or add data")
    km = KMeans(cfg.n_clusters, n_init=10, random_state=seed).fit(x)
    return (Classical("kmeans", {"centers": km.cluster_centers_.astype(np.float32)}, {}),
            {"inertia": float(km.inertia_), "iterations": int(km.n_iter_)})


@registry.model("dbscan", DBSCANConfig, **_FITTED)
def fit_dbscan(cfg: DBSCANConfig, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """DBSCAN (scikit-learn): density clusters and noise, no k given."""
    from sklearn.cluster import DBSCAN

    db = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit(x)
    core = db.core_sample_indices_
    found = len(set(db.labels_) - {-1})
    return (Classical("dbscan", {"core": x[core].astype(np.float32),
                                 "core_labels": db.labels_[core].astype(np.int64)}, {"eps": cfg.eps}),
            {"clusters": found, "noise_fraction": float((db.labels_ == -1).mean())})


@registry.model("pca", PCAConfig, **_FITTED)
def fit_pca(cfg: PCAConfig, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """PCA (scikit-learn): a linear projection; reconstruction error scores anomalies."""
    from sklearn.decomposition import PCA

    if cfg.n_components > min(x.shape):
        raise UserError(f"PCA with model.n_components = {cfg.n_components} needs at least that many examples "
                        f"and features; got {x.shape}", "lower model.n_components")
    p = PCA(cfg.n_components, random_state=seed).fit(x)
    return (Classical("pca", {"components": p.components_.astype(np.float32), "mean": p.mean_.astype(np.float32),
                              "explained_variance_ratio": p.explained_variance_ratio_.astype(np.float32)}, {}),
            {"explained_variance": float(p.explained_variance_ratio_.sum())})


@registry.model("tsne", TSNEConfig, **_FITTED)
def fit_tsne(cfg: TSNEConfig, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """t-SNE (scikit-learn): a 2-D map that keeps neighbours; new points placed by their nearest training points."""
    from sklearn.manifold import TSNE

    n = len(x)
    if n <= cfg.perplexity * 3:
        raise UserError(f"t-SNE with model.perplexity = {cfg.perplexity} needs more than "
                        f"{int(cfg.perplexity * 3)} training examples; got {n}", "lower model.perplexity")
    t = TSNE(cfg.n_components, perplexity=cfg.perplexity, init="pca", random_state=seed)
    e = t.fit_transform(x)
    return (Classical("tsne", {"train_x": x.astype(np.float32), "train_embedding": e.astype(np.float32)},
                      {"n_neighbors": cfg.n_neighbors}), {"kl_divergence": float(t.kl_divergence_)})


@registry.model("umap", UMAPConfig, **_FITTED)
def fit_umap(cfg: UMAPConfig, x: np.ndarray, seed: int) -> tuple[Classical, dict]:
    """UMAP (umap-learn, the `umap` extra): a manifold embedding; new points placed by their nearest training points."""
    try:
        import umap
    except ImportError:
        raise UserError("model.kind = 'umap' needs umap-learn, which is not installed",
                        "pip install 'trainlab[umap]' (or pip install umap-learn)") from None
    n = len(x)
    if n <= cfg.n_neighbors:
        raise UserError(f"UMAP with model.n_neighbors = {cfg.n_neighbors} needs more training examples; "
                        f"got {n}", "lower model.n_neighbors")
    u = umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, n_components=cfg.n_components,
                  random_state=seed, n_jobs=1)
    e = u.fit_transform(x)
    return (Classical("umap", {"train_x": x.astype(np.float32), "train_embedding": e.astype(np.float32)},
                      {"n_neighbors": cfg.n_neighbors}), {})
