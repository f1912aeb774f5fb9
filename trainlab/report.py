"""`trainlab report RUN_DIR [--compare OTHER_RUN ...]`: report.md and curves.png.

Runs are named by their folder (the recipe is mentioned beside it). The curves put training and validation side
by side, one panel per metric plus the learning rate, with a dotted line at the step whose weights were exported;
--compare overlays other runs, e.g. digits-overfit next to digits-cnn. The overfitting verdict (`judge_fit`)
compares the validation loss with the training loss at the same steps, over the later part of the run.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainlab import files
from trainlab.errors import UserError

# Keys of training rows that are bookkeeping, not metrics of the model (lr gets a panel of its own).
BOOKKEEPING = {"step", "split", "time", "lr", "grad_norm", "throughput", "epoch", "mfu"}
MIN_POINTS = 3  # validation points (after step 0) needed for a verdict
TOL = 0.02  # a relative change below 2% over the later part of the run counts as flat


def _num(v) -> float | None:
    """A finite number, or None (missing, text, NaN, inf, bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _series(rows: list[dict], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in the rows of `split`, sorted by step, skipping rows without a usable value;
    a step logged twice keeps its last value."""
    pts: dict[int, float] = {}
    for r in rows:
        if not isinstance(r, dict) or r.get("split") != split:
            continue
        s, v = _num(r.get("step")), _num(r.get(key))
        if s is not None and v is not None:
            pts[int(s)] = v
    if not pts:
        return np.array([], dtype=int), np.array([])
    steps = sorted(pts)
    return np.array(steps), np.array([pts[s] for s in steps], dtype=float)


# ---------------------------------------------------------------------------------------------------------------
# The overfitting verdict


@dataclass
class FitVerdict:
    """What the curves say. kind: 'overfitting', 'still improving', 'no sign' or 'too few'."""

    kind: str
    text: str
    points: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train loss, val loss), all
    late: list[tuple[int, float, float]] = field(default_factory=list)  # the points the verdict used
    window: int = 0  # training rows averaged: those in the `window` steps up to each validation step


def paired_points(rows: list[dict], key: str = "loss") -> tuple[list[tuple[int, float, float]], int]:
    """For every validation point after step 0: (step, training `key` averaged over the logged training rows in
    the window of steps just before it (up to and including the step), validation `key`). The window is half the
    usual distance between validation points, so each average describes the model near that step."""
    vs, vv = _series(rows, "val", key)
    ts, tv = _series(rows, "train", key)
    keep = vs > 0
    vs, vv = vs[keep], vv[keep]
    if len(vs) == 0 or len(ts) == 0:
        return [], 0
    gaps = np.diff(np.r_[0, vs])
    window = max(1, int(round(float(np.median(gaps)) / 2)))
    out = []
    for s, v in zip(vs, vv):
        m = (ts <= s) & (ts > s - window)
        if not m.any():  # training rows logged sparsely: the last one before the step, if it is recent
            before = np.nonzero((ts <= s) & (ts > s - 2 * max(window, int(gaps.max()))))[0]
            if len(before) == 0:
                continue
            m = np.zeros_like(m)
            m[before[-1]] = True
        out.append((int(s), float(tv[m].mean()), float(v)))
    return out, window


def _change(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The change over the steps by a least-squares line (less swayed by one noisy point than the two ends),
    absolute and relative to the largest magnitude of the values (a loss falling to 0 changes by -100%)."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return 0.0, 0.0
    slope = np.polyfit(steps.astype(float), values, 1)[0]
    d = float(slope * (steps[-1] - steps[0]))
    return d, d / max(float(np.abs(values).max()), 1e-12)


def judge_fit(rows: list[dict], key: str = "loss") -> FitVerdict:
    """Overfitting or not, from the curves in metrics.jsonl, comparing like with like: at every validation step,
    the validation loss and the training loss averaged over the rows logged just before it.

    Over the later part of the run (the points from half the last validation step on, at least MIN_POINTS):
    training falls (by more than TOL) while validation rises or stays flat -> 'overfitting'; validation still
    falls -> 'still improving' (more steps, or a larger model, would likely help); otherwise 'no sign'."""
    points, window = paired_points(rows, key)
    if len(points) < MIN_POINTS:
        n_val = int((_series(rows, "val", key)[0] > 0).sum())
        if n_val == 0:
            return FitVerdict("too few", f"no validation {key} after step 0 in metrics.jsonl: nothing to judge "
                              f"overfitting by", points, points, window)
        why = (f"{n_val} validation point(s) after step 0" if n_val < MIN_POINTS
               else f"only {len(points)} validation point(s) with training rows logged before them")
        return FitVerdict("too few", f"{why}: too few to judge overfitting, at least {MIN_POINTS} are needed "
                          f"(validate more often with a smaller loop.eval_every)", points, points, window)
    last = points[-1][0]
    late = [p for p in points if p[0] >= last / 2]
    if len(late) < MIN_POINTS:
        late = points[-MIN_POINTS:]
    st = np.array([p[0] for p in late])
    tr = np.array([p[1] for p in late])
    va = np.array([p[2] for p in late])
    _, tr_rel = _change(st, tr)
    _, va_rel = _change(st, va)
    best = int(np.argmin(va))
    numbers = (f"steps {st[0]}-{st[-1]} ({len(late)} validation points): training {key} {tr[0]:.4g} -> "
               f"{tr[-1]:.4g} ({tr_rel:+.1%} by a fitted line), validation {key} {va[0]:.4g} -> {va[-1]:.4g} "
               f"({va_rel:+.1%}; lowest {va[best]:.4g} at step {st[best]})")
    train_falls, val_falls, val_rises = tr_rel < -TOL, va_rel < -TOL, va_rel > TOL
    widening = va_rel - tr_rel  # how much faster validation worsens (or slower it improves) than training
    if (val_rises and tr_rel < 0) or (train_falls and not val_falls and widening > TOL):
        kind = "overfitting"
        how = "rises" if val_rises else "stays flat"
        degree = "the model is overfitting" if widening > 5 * TOL else "the model is beginning to overfit"
        text = (f"validation {key} {how} while training {key} keeps falling: {degree}, learning its training "
                f"examples rather than what generalizes (more data, augmentation, dropout, weight decay or "
                f"stopping earlier help)")
    elif val_falls or train_falls:
        kind = "still improving"
        text = (f"validation {key} is still falling at the end" if val_falls
                else f"training {key} still falls and validation {key} follows it") \
            + ": no overfitting yet; the model is still improving (underfitting: more steps, or a larger model, " \
              "would likely help)"
    else:
        kind = "no sign"
        text = (f"training {key} has stopped falling"
                + (f", yet validation {key} rises: not the overfitting pattern (an unstable run? look at the "
                   f"learning rate)" if val_rises else f" and validation {key} is flat: the run has converged, "
                   f"with no sign of overfitting"))
    return FitVerdict(kind, f"{text}. {numbers[0].upper()}{numbers[1:]}.", points, late, window)


def _fit_section(verdict: FitVerdict, exported: int | None, key: str = "loss") -> list[str]:
    md = ["", "## Generalization gap: is it overfitting?", "",
          f"**{verdict.kind}**: {verdict.text}"]
    if verdict.late:
        md += ["", f"| step | training {key} (mean of the rows in the {verdict.window} steps up to it) | "
                   f"validation {key} | gap (val - train) |", "|---|---|---|---|"]
        late = verdict.late
        if len(late) > 12:  # evenly spaced, the first and last kept
            late = [late[i] for i in np.unique(np.linspace(0, len(late) - 1, 12).round().astype(int))]
        md += [f"| {s} | {t:.4g} | {v:.4g} | {v - t:+.4g} |" for s, t, v in late]
        md.append("")
        if len(late) < len(verdict.late):
            md.append(f"{len(late)} of the {len(verdict.late)} points, evenly spaced. ")
        md.append("The percentages are the change along a line fitted through all the points, which a noisy "
                  "first or last point does not move much.")
        md.append("Training losses are averaged over the batches seen while training (with dropout and "
                  "augmentation, if any); their trend, not their level, is what the verdict uses.")
    if verdict.kind == "overfitting" and verdict.points:
        s, _, v = min(verdict.points, key=lambda p: p[2])
        md += ["", f"The lowest validation {key} was {v:.4g}, at step {s}"
               + (f"; the exported weights are those of step {exported}." if exported is not None else ".")]
    return md


# ---------------------------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    path: Path
    name: str  # the folder's name (made unique among the compared runs)
    summary: dict
    rows: list[dict]
    notes: list[str]


def _load(run_dir: Path) -> Run:
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl", "give a run folder written by `trainlab train`")
    notes: list[str] = []
    summary: dict = {}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            notes.append(f"summary.json could not be read ({type(e).__name__}); its numbers are missing")
        if not isinstance(summary, dict):
            notes.append("summary.json does not hold a JSON object; its numbers are missing")
            summary = {}
    rows, bad = files.read_metrics(run_dir / "metrics.jsonl")
    if bad:
        notes.append(f"{bad} damaged line{'s' * (bad > 1)} of metrics.jsonl skipped (not JSON, not UTF-8, or a "
                     "row without step and split); the curves use the other lines")
    return Run(run_dir, run_dir.resolve().name or str(run_dir), summary, rows, notes)


def _unique_names(runs: list[Run]) -> None:
    """Folders of the same name (a/run, b/run) are told apart by their parent."""
    taken = [r.name for r in runs]
    for r in runs:
        if taken.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.path.resolve().name}"


def exported_step(run_dir: Path, summary: dict) -> tuple[int | None, str]:
    """The step whose weights are in model/: summary.json's `exported`, else the best step when the recipe
    restores the best weights (loop.restore_best, the default), else the last step."""
    exp = _dict(summary.get("exported"))
    if _num(exp.get("step")) is not None:
        return int(exp["step"]), str(exp.get("why", ""))
    restore = True
    try:
        restore = bool(tomllib.loads((run_dir / "config.toml").read_text()).get("loop", {}).get("restore_best", True))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
        pass
    best = _dict(summary.get("best"))
    if restore and _num(best.get("step")) is not None:
        return int(best["step"]), f"best validation {best.get('metric', '?')} (loop.restore_best)"
    if _num(summary.get("steps")) is not None:
        return int(summary["steps"]), "the last step"
    return None, ""


# ---------------------------------------------------------------------------------------------------------------
# The report


def _trained(rows: list[dict]) -> bool:
    """Written by the training loop (models fitted in one call log no training steps)."""
    return any(r.get("split") == "train" and (_num(r.get("step")) or 0) > 0 for r in rows)


def _header(run: Run, exported: tuple[int | None, str]) -> list[str]:
    s = run.summary
    recipe = s.get("recipe")
    wall, params = _num(s.get("wall_s")), _num(s.get("parameters"))
    md = [f"# Run report: {run.name}", "",
          (f"- recipe: {recipe}; " if recipe else "") + f"status: {s.get('status', 'unknown')}, "
          f"{s.get('steps', '?')} steps, " + (f"{wall:.1f} s" if wall is not None else "? s")
          + f" on {s.get('device', '?')}, " + (f"{int(params):,} parameters" if params is not None else "? parameters")]
    b = _dict(s.get("best"))
    if _num(b.get("value")) is not None:
        md.append(f"- best validation {b.get('metric', '?')}: {b['value']:.4f} at step {b.get('step', '?')}")
    if exported[0] is not None and _trained(run.rows):
        md.append(f"- exported weights (model/): step {exported[0]}" + (f", {exported[1]}" if exported[1] else ""))
    if s.get("error"):
        md.append(f"- error: {s['error']}")
    return md + [f"- note: {n}" for n in run.notes]


def write_report(run_dir: str | Path, compare: list[str] | tuple[str, ...] = ()) -> Path:
    run_dir = Path(run_dir)
    runs = [_load(run_dir)] + [_load(Path(c)) for c in compare]
    _unique_names(runs)
    run = runs[0]
    exported = exported_step(run_dir, run.summary)
    md = _header(run, exported)
    if len(runs) > 1:
        md.append("- compared with: " + ", ".join(
            o.name + (f" (recipe: {o.summary['recipe']})" if o.summary.get("recipe") else "") for o in runs[1:]))
    if _trained(run.rows):
        md += _curves(runs)
    cfg_path = run_dir / "config.toml"
    if cfg_path.is_file():
        from trainlab import config, registry

        cfg = config.load_resolved(cfg_path)
        if registry.unsupervised(cfg.model.kind):
            md += _unsupervised(run_dir, cfg, run.rows)
        if hasattr(cfg.data, "env") and _trained(run.rows):  # an agent in a Gymnasium environment
            from trainlab.rl import report as rl_report

            md += rl_report.section(run_dir, cfg, run.rows)
    pictured = "test" if (run_dir / "eval_test.json").is_file() else "val"  # confusion.png: test's if there
    for split in ("val", "test"):
        p = run_dir / f"eval_{split}.json"
        if not p.is_file():
            continue
        try:
            e = files.read_eval(p).model_dump()
        except UserError as err:
            md += ["", f"## `trainlab eval --split {split}`", "", f"{err.message.replace(str(p), p.name)}; run "
                   f"`trainlab eval {run_dir} --split {split}` again."]
            continue
        section = _eval_section(_dict(e), split, run_dir, picture=split == pictured)
        md += ["", f"## `trainlab eval --split {split}`", ""] + section
    out = run_dir / "report.md"
    out.write_text("\n".join(md) + "\n")
    return out


def _eval_table(e: dict) -> list[str]:
    used = e.get("labels_used")
    metrics, baseline = _dict(e.get("metrics")), _dict(e.get("baseline"))
    head = "| metric | model | baseline |" + (" uses labels |" if used is not None else "")
    lines = [head, "|---|---|---|" + ("---|" if used is not None else "")]
    for k, v in metrics.items():
        if isinstance(v, float):
            b = _num(baseline.get(k))
            lines.append(f"| {k} | {v:.4f} | {'' if b is None else f'{b:.4f}'} |"
                         + ((" yes |" if k in used else " no |") if used is not None else ""))
    if baseline.get("name"):
        lines.append(f"\nbaseline: {baseline['name']}")
    if used is not None:
        lines.append("\nMetrics marked 'yes' compare with the true labels, which were held back from fitting; "
                     "the others use no labels at all.")
    return lines


def _cell(text) -> str:
    """Text for a markdown table cell (a class named 'a|b' must not split the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _eval_section(e: dict, split: str, run_dir: Path, picture: bool) -> list[str]:
    """The metrics beside the baseline; for a classifier also the per-class scores and the confusion matrix (a
    markdown table with class names, and confusion.png when `picture`)."""
    md = _eval_table(e)
    m = _dict(e.get("metrics"))
    per_class = _dict(m.get("per_class"))
    if per_class:
        md += ["", f"### Per class ({split} split)", "", "| class | precision | recall | f1 | support |",
               "|---|---|---|---|---|"]
        for name, s in per_class.items():
            s = _dict(s)
            cells = [f"{v:.4f}" if (v := _num(s.get(k))) is not None else "" for k in ("precision", "recall", "f1")]
            md.append(f"| {_cell(name)} | " + " | ".join(cells) + f" | {s.get('support', '')} |")
    cm = m.get("confusion_matrix")
    if not (isinstance(cm, list) and cm and all(isinstance(r, list) and len(r) == len(cm) for r in cm)
            and all(_num(v) is not None for r in cm for v in r)):
        return md
    raw = [str(n) for n in list(per_class)[:len(cm)]] + [str(i) for i in range(len(per_class), len(cm))]
    names = [_cell(n) for n in raw]
    md += ["", f"### Confusion matrix ({split} split; rows: true class, columns: predicted)", ""]
    if picture:
        from trainlab import plots

        plots.confusion(cm, raw, run_dir / "confusion.png", f"confusion matrix, {split} split "
                        f"({sum(map(sum, cm))} examples)")
        md += ["![confusion matrix with class names](confusion.png)", ""]
    if len(cm) <= 30:
        md += ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(cm)]
        md += [f"| **{names[i]}** | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(cm)]
    else:
        md.append(f"({len(cm)} classes: too many for a table here; the counts are in eval_{split}.json.)")
    return md


# ---------------------------------------------------------------------------------------------------------------
# curves.png


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return len(a[1]) == len(b[1]) and np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], rtol=1e-6, atol=1e-9)


def _panels(runs: list[Run]) -> tuple[list[str], list[str], dict[str, str]]:
    """The keys to draw, in order (loss, the other validation metrics, training-only metrics, the learning rate),
    the keys left out because they repeat loss, and titles. A key whose series equals loss's in every run
    (a GPT's `ce` without auxiliary losses) is left out."""
    keys: list[str] = ["loss"]
    for split in ("val", "train"):
        for run in runs:
            for r in run.rows:
                if r.get("split") == split:
                    for k, v in r.items():
                        if k not in keys and k not in BOOKKEEPING and _num(v) is not None:
                            keys.append(k)
    keys = ["loss"] + sorted(keys[1:], key=lambda k: (not any(k in r for run in runs for r in run.rows
                                                                if r.get("split") == "val"), k))
    duplicates = [k for k in keys[1:] if all(
        _same(_series(run.rows, sp, k), _series(run.rows, sp, "loss")) for run in runs for sp in ("train", "val"))]
    keys = [k for k in keys if k not in duplicates]
    if any(len(_series(run.rows, "train", "lr")[1]) for run in runs):
        keys.append("lr")
    titles = {"lr": "learning rate"}
    return keys, duplicates, titles


def _constant(runs: list[Run], key: str) -> float | None:
    vals = np.concatenate([_series(run.rows, sp, key)[1] for run in runs for sp in ("train", "val")])
    if len(vals) and np.allclose(vals, vals[0], rtol=1e-6, atol=1e-12):
        return float(vals[0])
    return None


def _layout(keys: list[str], runs: list[Run], cols: int) -> tuple[list[str], dict[str, float]]:
    """Constant series go last: they keep their panel where the last row has room anyway, but a row holding
    nothing but constant panels is not drawn; those are named in a note instead."""
    constant = {k: c for k in keys if (c := _constant(runs, k)) is not None}
    moving = [k for k in keys if k not in constant]
    fits = (-len(moving)) % cols  # empty places in the last row of the moving panels
    if not moving:
        fits = cols
    shown = list(constant)[:fits]
    return moving + shown, {k: constant[k] for k in constant if k not in shown}


def _curves(runs: list[Run]) -> list[str]:
    from trainlab import plots

    run = runs[0]
    keys, duplicates, titles = _panels(runs)
    keys, hidden = _layout(keys, runs, min(plots.MAX_COLS, max(1, len(keys))))
    note = ("constant through the run (not drawn): " + ", ".join(f"{k} = {v:.4g}" for k, v in hidden.items())
            if hidden else "")
    drawn = []
    for r in runs:
        rc = plots.RunCurves(r.name, exported=exported_step(r.path, r.summary)[0] if _trained(r.rows) else None)
        for k in keys:
            train = _series(r.rows, "train", k)
            val = _series(r.rows, "val", k) if k != "lr" else (np.array([]), np.array([]))
            if len(train[1]) or len(val[1]):
                rc.curves[k] = plots.Curve(train, val)
        drawn.append(rc)
    plots.curves(drawn, keys, run.path / "curves.png", titles, note)
    md = ["", "![training and validation curves; dotted: the exported step](curves.png)"]
    if duplicates or hidden:
        md.append("")
    if duplicates:
        md.append(f"Not drawn: {', '.join(duplicates)} (the same values as loss).")
    if hidden:
        md.append(note[0].upper() + note[1:] + ".")
    table = ["loss"] + [k for k in keys if k not in ("loss", "lr") and any(
        k in _dict(_dict(r.summary.get("metrics")).get("val")) for r in runs)]
    md += ["", "## Final metrics", "", "| run | split | " + " | ".join(table) + " |",
           "|---|---|" + "---|" * len(table)]
    for r in runs:
        for split in ("train", "val"):
            m = _dict(_dict(r.summary.get("metrics")).get(split))
            md.append(f"| {r.name} | {split} | "
                      + " | ".join(f"{v:.4f}" if (v := _num(m.get(k))) is not None else "" for k in table) + " |")
    md += _fit_section(judge_fit(run.rows), exported_step(run.path, run.summary)[0])
    if len(runs) > 1:
        md += ["", "The compared runs:", ""]
    for other in runs[1:]:
        v = judge_fit(other.rows)
        md.append(f"- {other.name}: **{v.kind}**: {v.text}")
    return md


def _unsupervised(run_dir: Path, cfg, rows: list[dict]) -> list[str]:
    """Pictures of the validation split, and its metrics with which of them needed labels."""
    from trainlab import data as data_lib, models, plots
    from trainlab.eval import unsupervised as U

    model, info = models.load(run_dir / "model")
    data = data_lib.build(cfg.data)
    files.check_fits(info, data.info, run_dir / "model")
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
    elbow = [r for r in rows if r.get("split") == "elbow" and all(_num(r.get(k)) is not None
                                                                  for k in ("k", "inertia", "silhouette"))]
    if elbow:
        plots.elbow(elbow, run_dir / "elbow.png")
        md.append("![inertia and silhouette against k](elbow.png)")
    if "threshold" in result["metrics"]:
        plots.anomaly_scores(v, info["anomaly_class"], result["metrics"]["threshold"], run_dir / "anomaly_scores.png")
        md.append("![anomaly scores of normal and anomalous examples](anomaly_scores.png)")
    return md + ["", "### Validation metrics", ""] + _eval_table(result)
