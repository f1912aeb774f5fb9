"""`trainlab report RUN_DIR [--compare OTHER_RUN ...]`: report.md and curves.png.

The curves put training and validation side by side, so overfitting (validation getting worse while training
keeps improving) shows at a glance; --compare overlays other runs, e.g. digits-overfit next to digits-cnn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainlab.errors import UserError
from trainlab.runs import read_metrics


def _series(rows: list[dict], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
    if not pts:
        return np.array([]), np.array([])
    s, v = zip(*pts)
    return np.array(s), np.array(v, dtype=float)


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    """Mean over a trailing window of up to n points (the per-step training loss is noisy)."""
    if len(v) == 0 or n <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    lo = np.maximum(np.arange(1, len(v) + 1) - n, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(v) + 1) - lo)


def _load(run_dir: Path) -> tuple[dict, list[dict]]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl", "give a run folder written by `trainlab train`")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return summary, read_metrics(run_dir)


def write_report(run_dir: str | Path, compare: list[str] | tuple[str, ...] = ()) -> Path:
    run_dir = Path(run_dir)
    runs = [(run_dir, *_load(run_dir))] + [(Path(c), *_load(Path(c))) for c in compare]
    summary, rows = runs[0][1], runs[0][2]
    md = [f"# Run report: {summary.get('recipe', run_dir.name)}", "",
          f"- status: {summary.get('status', 'unknown')}, {summary.get('steps', '?')} steps, "
          f"{summary.get('wall_s', 0):.1f} s on {summary.get('device', '?')}, "
          f"{summary.get('parameters', 0):,} parameters"]
    if summary.get("best"):
        b = summary["best"]
        md.append(f"- best validation {b['metric']}: {b['value']:.4f} at step {b['step']}")
    if any(r["split"] == "train" and r["step"] > 0 for r in rows):  # a run of the training loop
        md += _curves(run_dir, runs)
    cfg_path = run_dir / "config.toml"
    if cfg_path.is_file():
        from trainlab import config, registry

        cfg = config.load_resolved(cfg_path)
        if registry.unsupervised(cfg.model.kind):
            md += _unsupervised(run_dir, cfg, rows)
    for split in ("val", "test"):
        p = run_dir / f"eval_{split}.json"
        if p.is_file():
            md += ["", f"## `trainlab eval --split {split}`", ""] + _eval_table(json.loads(p.read_text()))
    out = run_dir / "report.md"
    out.write_text("\n".join(md) + "\n")
    return out


def _eval_table(e: dict) -> list[str]:
    used = e.get("labels_used")
    head = "| metric | model | baseline |" + (" uses labels |" if used is not None else "")
    lines = [head, "|---|---|---|" + ("---|" if used is not None else "")]
    for k, v in e["metrics"].items():
        if isinstance(v, float):
            b = e["baseline"].get(k)
            lines.append(f"| {k} | {v:.4f} | {'' if b is None else f'{b:.4f}'} |"
                         + ((" yes |" if k in used else " no |") if used is not None else ""))
    lines.append(f"\nbaseline: {e['baseline']['name']}")
    if used is not None:
        lines.append("\nMetrics marked 'yes' compare with the true labels, which were held back from fitting; "
                     "the others use no labels at all.")
    return lines


def _curves(run_dir: Path, runs: list) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    summary, rows = runs[0][1], runs[0][2]
    extra = sorted({k for r in rows if r["split"] == "val" for k in r} - {"step", "split", "time", "loss"})
    fig, axes = plt.subplots(1, 1 + len(extra), figsize=(6 * (1 + len(extra)), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (d, s, rs) in enumerate(runs):
        label, c = s.get("recipe", d.name), colors[i % len(colors)]
        for j, key in enumerate(["loss", *extra]):
            ax = axes[0][j]
            st, v = _series(rs, "train", key)
            if len(v):
                ax.plot(st, _smooth(v, max(1, len(v) // 50)), color=c, alpha=0.6, lw=1, label=f"{label} train")
            st, v = _series(rs, "val", key)
            if len(v):
                ax.plot(st, v, color=c, lw=2, ls="--", marker="o", ms=3, label=f"{label} val")
            ax.set_xlabel("optimizer step")
            ax.set_title(key)
            ax.grid(alpha=0.3)
    if all(v > 0 for _, _, rs in runs for v in _series(rs, "train", "loss")[1]):
        axes[0][0].set_yscale("log")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=110)
    plt.close(fig)
    md = ["", "![training and validation curves](curves.png)", "", "## Final metrics", "",
          "| run | split | " + " | ".join(["loss", *extra]) + " |", "|---|---|" + "---|" * (1 + len(extra))]
    for d, s, _ in runs:
        for split in ("train", "val"):
            m = s.get("metrics", {}).get(split, {})
            md.append(f"| {s.get('recipe', d.name)} | {split} | "
                      + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in ["loss", *extra]) + " |")
    return md + ["", _gap_note(summary)]


def _unsupervised(run_dir: Path, cfg, rows: list[dict]) -> list[str]:
    """Pictures of the validation split, and its metrics with which of them needed labels."""
    from trainlab import data as data_lib, models, plots
    from trainlab.eval import unsupervised as U

    model, info = models.load(run_dir / "model")
    data = data_lib.build(cfg.data)
    views = U.clustered_views(model, info, cfg, data, "val")  # built once, for the metrics and the pictures
    result = U.evaluate(model, info, cfg, data, "val", views)
    v, shape, kind = views["val"], info["input_shape"], cfg.model.kind
    md = ["", "## What the model found (validation split)", ""]
    plots.embedding(v, run_dir / "embedding.png", kind, info["class_names"])
    md.append("![2-D embedding coloured by cluster and by true class](embedding.png)")
    if v.recon is not None and len(shape) == 3:
        plots.image_grid([("input", v.x[:12]), ("reconstruction", v.recon[:12])], shape,
                         run_dir / "reconstructions.png", f"{kind}: inputs and their reconstructions")
        md.append("![inputs above their reconstructions](reconstructions.png)")
    if kind == "vae" and len(shape) == 3:
        plots.vae_samples(model, shape, run_dir / "samples.png", cfg.run.seed)
        md.append("![samples decoded from the prior](samples.png)")
    elbow = [r for r in rows if r["split"] == "elbow"]
    if elbow:
        plots.elbow(elbow, run_dir / "elbow.png")
        md.append("![inertia and silhouette against k](elbow.png)")
    if "threshold" in result["metrics"]:
        plots.anomaly_scores(v, info["anomaly_class"], result["metrics"]["threshold"], run_dir / "anomaly_scores.png")
        md.append("![anomaly scores of normal and anomalous examples](anomaly_scores.png)")
    return md + ["", "### Validation metrics", ""] + _eval_table(result)


def _gap_note(summary: dict) -> str:
    tr, va = summary.get("metrics", {}).get("train", {}), summary.get("metrics", {}).get("val", {})
    if "loss" not in tr or "loss" not in va:
        return ""
    gap = va["loss"] - tr["loss"]
    verdict = ("validation loss is far above training loss: the model is overfitting (more data, augmentation, "
               "dropout, weight decay or early stopping help)" if gap > max(0.1, tr["loss"])
               else "training and validation losses are close: no sign of strong overfitting")
    return f"Generalization gap (val loss - train loss): {gap:.4f}; {verdict}."
