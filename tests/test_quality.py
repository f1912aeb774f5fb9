"""The bundled supervised recipes reach their published targets on the held-out test split (full runs, ~20 s)."""

import contextlib
import io

import pytest

from trainlab import config, loop
from trainlab.eval import evaluate_run


@pytest.mark.parametrize("recipe,metric,target", [("digits-cnn", "accuracy", 0.98),
                                                  ("breast-cancer-mlp", "accuracy", 0.95)])
def test_classifiers_reach_their_test_accuracy(tmp_path, recipe, metric, target):
    with contextlib.redirect_stdout(io.StringIO()):
        loop.train(config.load_recipe(recipe), tmp_path / "r")
    result = evaluate_run(tmp_path / "r", "test")
    assert result["metrics"][metric] >= target


def test_diabetes_regression_beats_the_mean_baseline(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        loop.train(config.load_recipe("diabetes-mlp"), tmp_path / "r")
    result = evaluate_run(tmp_path / "r", "test")
    assert result["metrics"]["mse"] < result["baseline"]["mse"]
    assert result["metrics"]["r2"] > 0.1
