"""trainlab's supervised MLPs against scikit-learn's MLPClassifier / MLPRegressor on the same split.

Both train the same hidden widths on the same standardized training split (trainlab's data layer), several
seeds each, in this one process; the script prints the median test score and training wall time of each and
the ratios. Usage: python benchmarks/supervised_vs_sklearn.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor

from trainlab import config, data as data_lib, loop
from trainlab.eval import evaluate_run

CASES = [("digits-mlp", "accuracy"), ("breast-cancer-mlp", "accuracy"), ("diabetes-mlp", "r2")]


def run_trainlab(recipe: str, metric: str, seed: int, tmp: Path) -> tuple[float, float]:
    cfg = config.load_recipe(recipe, [f"run.seed={seed}"])
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        loop.train(cfg, tmp / f"{recipe}-{seed}")
    wall = time.perf_counter() - t
    return evaluate_run(tmp / f"{recipe}-{seed}", "test")["metrics"][metric], wall


def run_sklearn(recipe: str, metric: str, seed: int) -> tuple[float, float]:
    cfg = config.load_recipe(recipe)
    d = data_lib.build(cfg.data)
    xtr, ytr = d.splits["train"].x.flatten(1).numpy(), d.splits["train"].y.numpy()
    xte, yte = d.splits["test"].x.flatten(1).numpy(), d.splits["test"].y.numpy()
    kind = MLPClassifier if d.info["task"] == "classification" else MLPRegressor
    # Same widths, Adam, same batch size and epochs; sklearn's own early stopping off (it would carve its own
    # validation split out of the training data).
    est = kind(hidden_layer_sizes=tuple(cfg.model.hidden), batch_size=cfg.data.batch_size,
               learning_rate_init=cfg.optim.lr, max_iter=cfg.loop.epochs, random_state=seed, alpha=1e-4)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(xtr, ytr)
    wall = time.perf_counter() - t
    pred = est.predict(xte)
    return (accuracy_score(yte, pred) if metric == "accuracy" else r2_score(yte, pred)), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"{'recipe':<20}{'metric':<10}{'trainlab':>10}{'sklearn':>10}{'tl s':>8}{'sk s':>8}{'time ratio':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, metric in CASES:
            tl = [run_trainlab(recipe, metric, s, Path(tmp)) for s in range(args.runs)]
            sk = [run_sklearn(recipe, metric, s) for s in range(args.runs)]
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            print(f"{recipe:<20}{metric:<10}{med(tl, 0):>10.4f}{med(sk, 0):>10.4f}{med(tl, 1):>8.2f}"
                  f"{med(sk, 1):>8.2f}{med(sk, 1) / med(tl, 1):>11.2f}x", flush=True)
    print("time ratio = sklearn wall time / trainlab wall time (above 1: trainlab is faster); medians of "
          f"{args.runs} seeds")


if __name__ == "__main__":
    main()
