"""Fitting classical unsupervised methods (k-means, DBSCAN, PCA, t-SNE, UMAP) into a run folder.

They have no training loop: scikit-learn / umap-learn fit them in one call. The run folder is the same as for
a trained network (config.toml, metrics.jsonl, summary.json, model/), minus checkpoints: there is nothing to
resume.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from trainlab import config, data as data_lib
from trainlab.config import Config
from trainlab.errors import UserError
from trainlab.runs import MetricLog, write_json


def fit(cfg: Config, run_dir: Path) -> dict:
    from trainlab.eval import unsupervised
    from trainlab.models import classical

    t0 = time.time()
    data = data_lib.build(cfg.data)
    if cfg.data.anomaly_class >= 0 and cfg.model.kind in ("tsne", "umap"):
        raise UserError(f"model.kind = '{cfg.model.kind}' gives no anomaly score",
                        "use kmeans, dbscan, pca, autoencoder or vae for anomaly detection")
    x = data.splits["train"].x.flatten(1).numpy()
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(cfg, run_dir / "config.toml")
    print(f"trainlab: {cfg.run.name} | {cfg.model.kind} on {x.shape[0]:,} x {x.shape[1]} training inputs | {run_dir}",
          flush=True)
    log = MetricLog(run_dir)
    if cfg.model.kind == "kmeans" and cfg.model.elbow_max_k:
        # The elbow: inertia (and silhouette) against k, to see where more clusters stop paying.
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        for k in range(2, min(cfg.model.elbow_max_k, len(x) - 1) + 1):
            km = KMeans(k, n_init=4, random_state=cfg.run.seed).fit(x)
            log.log(k, "elbow", {"k": k, "inertia": float(km.inertia_),
                                 "silhouette": float(silhouette_score(x, km.labels_))})
    model, fit_metrics = classical.fit(cfg.model, x, cfg.run.seed)
    log.log(0, "train", fit_metrics)
    model.save(run_dir / "model", cfg.model, data.info)
    val = unsupervised.evaluate(model, data.info, cfg, data, "val")["metrics"]
    log.log(0, "val", val)
    log.close()
    summary = {"status": "completed", "recipe": cfg.run.name, "steps": 0, "wall_s": round(time.time() - t0, 3),
               "parameters": model.num_parameters(), "device": "cpu",
               "metrics": {"train": fit_metrics, "val": val}, "best": None}
    write_json(run_dir / "summary.json", summary)
    print("done: " + "  ".join(f"{k} {v:.4g}" for k, v in val.items() if np.isfinite(v))
          + f" | {summary['wall_s']:.1f}s | {run_dir}", flush=True)
    return summary
