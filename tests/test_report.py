"""`trainlab report` on run folders written here by hand: the overfitting verdict from the curves, runs named by
their folder, the curves grid, the exported step, the classifier's per-class tables, and damaged input."""

import json
import math
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from trainlab import plots, report


def rows_from(train, val, every: int = 10, extra=None):
    """metrics.jsonl rows: train(step) per step 1..N, val(step) at step 0 and every `every` steps."""
    n = max(s for s in range(1, 10_000) if train(s) is not None)
    out = []
    for s in range(0, n + 1):
        if s % every == 0:
            out.append({"step": s, "split": "val", "time": 0.0, "loss": val(s), **(extra or {})})
        if s:
            out.append({"step": s, "split": "train", "time": 0.0, "loss": train(s), "lr": 1e-3, "grad_norm": 1.0})
    return out


def upto(n, f):
    return lambda s: f(s) if s <= n else None


def test_rising_validation_with_falling_training_is_overfitting():
    rows = rows_from(upto(200, lambda s: 2 * math.exp(-s / 40)), lambda s: 1.0 + ((s - 60) / 100) ** 2)
    v = report.judge_fit(rows)
    assert v.kind == "overfitting" and "rises" in v.text
    assert v.late[0][0] >= 100 and v.late[-1][0] == 200  # the later half of the run
    assert "lowest" in v.text and "steps 100-200" in v.text.lower()


def test_flat_validation_with_falling_training_is_overfitting():
    # The VAE case: training keeps falling to ~13, validation stays at 25.6.
    rows = rows_from(upto(300, lambda s: 30 - 17 * s / 300), lambda s: 25.6 + 0.05 * math.sin(s))
    v = report.judge_fit(rows)
    assert v.kind == "overfitting" and "flat" in v.text
    assert "validation loss 25.5" in v.text and "training loss 21.6" in v.text  # the numbers used are said


def test_both_falling_is_still_improving():
    rows = rows_from(upto(100, lambda s: 3 - 0.02 * s), lambda s: 3.2 - 0.018 * s)
    v = report.judge_fit(rows)
    assert v.kind == "still improving"


def test_converged_is_no_sign():
    rows = rows_from(upto(200, lambda s: 0.5 + 2 * math.exp(-s / 10)), lambda s: 0.6 + 2 * math.exp(-s / 10))
    assert report.judge_fit(rows).kind == "no sign"


def test_few_validation_points_are_too_few_to_judge():
    rows = rows_from(upto(40, lambda s: 1 / s), lambda s: 1.0, every=20)  # val at 0, 20, 40
    v = report.judge_fit(rows)
    assert v.kind == "too few" and "2 validation point" in v.text and "eval_every" in v.text
    assert report.judge_fit([]).kind == "too few"


def test_validation_is_compared_with_training_at_the_same_steps():
    # The old note compared the last validation loss with the last training window; here training at step 10
    # is high and falls only later: each point must pair with the training rows just before it.
    rows = rows_from(upto(40, lambda s: 10.0 if s <= 10 else 1.0), lambda s: 5.0)
    points, window = report.paired_points(rows)
    assert [p[0] for p in points] == [10, 20, 30, 40] and window == 5
    assert points[0][1] == 10.0 and points[1][1] == 1.0  # step 10: rows 6..10; step 20: rows 16..20
    sparse = [r for r in rows if r["split"] == "val" or r["step"] % 8 == 0]  # training logged every 8 steps
    assert [p[1] for p in report.paired_points(sparse)[0]] == [10.0, 1.0, 1.0, 1.0]


def write_run(d, rows, summary=None, torn=False):
    d.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "metrics.jsonl").write_text(text + ('{"step": 9, "spl' if torn else ""))
    if summary is not None:
        (d / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return d


def gpt_like_rows():
    """loss and ce identical (a GPT), a constant metric, and the learning rate."""
    rows = rows_from(upto(60, lambda s: 3 * math.exp(-s / 30)), lambda s: 3 * math.exp(-s / 40), every=10)
    for r in rows:
        r["ce"] = r["loss"]
        if r["split"] == "val":
            r.update(accuracy=1 - r["loss"] / 4, bpb=r["loss"] / 0.7, kl=0.5 + r["step"] / 100, beta=0.25)
    return rows


def test_report_names_runs_by_folder_and_draws_a_grid(tmp_path):
    summary = {"status": "completed", "recipe": "some-recipe", "steps": 60, "wall_s": 1.0, "parameters": 10,
               "device": "cpu", "metrics": {"train": {"loss": 0.4}, "val": {"loss": 0.7, "accuracy": 0.8}},
               "best": {"step": 50, "metric": "loss", "value": 0.7},
               "exported": {"step": 50, "why": "best validation loss"}}
    a = write_run(tmp_path / "first-try", gpt_like_rows(), summary)
    b = write_run(tmp_path / "other" / "first-try", gpt_like_rows()[:40], {**summary, "recipe": "another"})
    md = report.write_report(a).read_text()
    assert md.startswith("# Run report: first-try\n") and "recipe: some-recipe" in md
    assert "| first-try | train |" in md and "some-recipe |" not in md
    md = report.write_report(a, [str(b)]).read_text()  # same folder names are told apart by their parent
    assert md.startswith(f"# Run report: {tmp_path.name}/first-try\n")
    assert "other/first-try (recipe: another)" in md and "| other/first-try | val |" in md
    assert "exported weights (model/): step 50, best validation loss" in md
    assert "Not drawn: ce (the same values as loss)" in md
    assert "Generalization gap" in md
    img = matplotlib.image.imread(a / "curves.png")
    h, w = img.shape[:2]
    assert w <= 3 * 560 and h > 2 * 300  # loss, accuracy, bpb, kl, lr (+ constant beta): two rows of three
    assert "Constant through the run" not in md  # beta and lr are constant but fill the second row's places


def test_constant_panels_fill_the_last_row_or_become_a_note():
    run = report.Run(Path("."), "r", {}, [{"step": s, "split": "train", "a": float(s), "b": 1.0, "c": 2.0,
                                                   "d": float(-s)} for s in range(1, 5)], [])
    keys, hidden = report._layout(["a", "b", "d"], [run], 3)
    assert keys == ["a", "d", "b"] and hidden == {}  # b fills the third place of the row
    keys, hidden = report._layout(["a", "b", "c", "d"], [run], 3)
    assert keys == ["a", "d", "b"] and hidden == {"c": 2.0}  # c alone would open a new row


def test_log_axis_ticks_are_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.45, 2.5])
    assert plots.log_axis(ax, np.array([0.45, 2.5]))
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
    assert {"0.5", "1", "2"} <= labels
    assert not plots.log_axis(ax, np.array([74.0, 91.0]))  # a narrow range stays linear
    plt.close(fig)


def test_exported_step_fallbacks(tmp_path):
    s = {"steps": 80, "best": {"step": 30, "metric": "loss", "value": 1.0}}
    assert report.exported_step(tmp_path, {**s, "exported": {"step": 70, "why": "x"}}) == (70, "x")
    assert report.exported_step(tmp_path, s)[0] == 30  # restore_best is the default
    (tmp_path / "config.toml").write_text("[loop]\nrestore_best = false\n")
    assert report.exported_step(tmp_path, s)[0] == 80
    assert report.exported_step(tmp_path, {})[0] is None


def test_classifier_eval_gives_per_class_table_and_confusion_matrix(tmp_path):
    d = write_run(tmp_path / "clf", [{"step": 0, "split": "val", "loss": 1.0}], {"steps": 0})
    names = ["cat", "dog", "bird"]
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 4]]
    per = {n: {"precision": 0.5 + i / 10, "recall": 0.6, "f1": 0.55, "support": sum(cm[i])}
           for i, n in enumerate(names)}
    (d / "eval_test.json").write_text(json.dumps({"split": "test", "n": 20, "task": "classification", "metrics": {
        "accuracy": 0.8, "per_class": per, "confusion_matrix": cm}, "baseline": {"name": "majority", "accuracy": 0.5}}))
    md = report.write_report(d).read_text()
    assert "| class | precision | recall | f1 | support |" in md and "| dog | 0.6000 | 0.6000 | 0.5500 | 10 |" in md
    assert "| true \\ predicted | cat | dog | bird |" in md and "| **dog** | 2 | 7 | 1 |" in md
    assert (d / "confusion.png").stat().st_size > 1000 and "confusion.png" in md


@pytest.mark.parametrize("summary", ["[1, 2]", "{not json", None])
def test_damaged_input_does_not_crash_or_drop_curves(tmp_path, summary):
    rows = rows_from(upto(40, lambda s: 2 - s / 40), lambda s: 2 - s / 50)
    rows += [{"split": "train", "loss": 1.0}, {"step": "x", "split": "train", "loss": 1.0},
             {"step": 41, "loss": 0.1}, {"step": 42, "split": "train", "loss": None}, {"step": 43, "split": "val"},
             {"step": 44, "split": "train", "loss": "nan"}]
    d = write_run(tmp_path / "damaged", rows, summary, torn=True)
    md = report.write_report(d).read_text()
    assert (d / "curves.png").stat().st_size > 1000
    assert "## Generalization gap" in md and "**still improving**" in md
    if summary is not None:
        assert "summary.json" in md  # said, not silently ignored
