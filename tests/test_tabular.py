"""CSV tables with columns that are not features: data.ignore_columns leaves out an id or a name; the target
column (labels) stays aside, so clustering an unlabelled table can still be scored against it."""

import json

import numpy as np
import pytest

from trainlab.config import data_table
from trainlab.data import build
from trainlab.errors import UserError
from tests.conftest import run_cli

SPECIES = ("setosa", "versicolor", "virginica")


def flowers(path, n=60, seed=0) -> str:
    """id, name (strings), two numeric measurements in three well separated groups, and the species."""
    rng = np.random.default_rng(seed)
    rows = ["id,name,length,width,species"]
    for i in range(n):
        k = i % 3
        a, b = rng.normal(10 * k, 0.5), rng.normal(-5 * k, 0.5)
        rows.append(f"{1000 + i},flower {i},{a:.3f},{b:.3f},{SPECIES[k]}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_ignored_columns_are_neither_features_nor_target(tmp_path):
    p = flowers(tmp_path / "f.csv")
    d = build(data_table(source="csv", path=p, ignore_columns=["id", "name"]))
    assert d.info["task"] == "classification" and d.info["class_names"] == list(SPECIES)
    assert d.info["feature_names"] == ["length", "width"] and d.info["input_shape"] == [2]
    # Unlabelled: every column not ignored is a feature (here: a numeric-only table).
    u = build(data_table(source="csv", path=p, task="unlabeled", ignore_columns=["id", "name", "species"]))
    assert u.info["task"] == "unlabeled" and u.info["feature_names"] == ["length", "width"]
    assert set(u.splits["train"].y.tolist()) == {-1}


def test_the_default_target_is_the_last_column_not_ignored(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label,note\n" + "\n".join(f"{i},{i % 2},row {i}" for i in range(40)) + "\n")
    d = build(data_table(source="csv", path=str(p), ignore_columns=["note"]))
    assert d.info["task"] == "classification" and d.info["feature_names"] == ["a"]


def test_an_ignored_column_that_does_not_exist_names_the_columns(tmp_path):
    p = flowers(tmp_path / "f.csv", n=9)
    with pytest.raises(UserError) as e:
        build(data_table(source="csv", path=p, ignore_columns=["id", "nmae"]))
    msg = e.value.message
    assert "'nmae'" in msg and "'id'" not in msg.split("columns are")[0] and "['id', 'name', 'length'" in msg
    assert "\n" not in msg and "data.ignore_columns" in e.value.hint


def test_a_string_column_left_names_itself_and_suggests_ignore_columns(tmp_path):
    p = flowers(tmp_path / "f.csv", n=9)
    with pytest.raises(UserError) as e:
        build(data_table(source="csv", path=p, ignore_columns=["id"]))
    assert "column 'name'" in e.value.message and "not numeric" in e.value.message
    assert 'data.ignore_columns=["name"]' in e.value.hint and "\n" not in e.value.message + e.value.hint
    with pytest.raises(UserError) as e:  # unlabelled: the species column is a feature too, unless ignored
        build(data_table(source="csv", path=p, task="unlabeled", ignore_columns=["id", "name"]))
    assert "column 'species'" in e.value.message and 'data.ignore_columns=["species"]' in e.value.hint
    with pytest.raises(UserError) as e:  # ... also when it was named as the target: say how to keep it as labels
        build(data_table(source="csv", path=p, task="unlabeled", target="species", ignore_columns=["id", "name"]))
    assert "drop data.task=unlabeled" in e.value.hint


def test_ignoring_the_target_or_every_feature_is_an_error(tmp_path):
    p = flowers(tmp_path / "f.csv", n=9)
    with pytest.raises(UserError, match="also in data.ignore_columns"):
        build(data_table(source="csv", path=p, target="species", ignore_columns=["id", "name", "species"]))
    with pytest.raises(UserError, match="no feature column is left"):
        build(data_table(source="csv", path=p, ignore_columns=["id", "name", "length", "width"]))
    with pytest.raises(UserError, match="leaves no column"):
        build(data_table(source="csv", path=p, ignore_columns=["id", "name", "length", "width", "species"]))


def test_ignore_columns_from_the_command_line_and_clusters_scored_against_the_labels(tmp_path):
    """k-means on an id/name/measurements/species table: the species stay aside as labels and score the clusters
    (ARI); with data.task=unlabeled and the species ignored, the same table clusters without labels."""
    p = flowers(tmp_path / "f.csv", n=90)
    run = tmp_path / "labelled"
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={p}", 'data.ignore_columns=["id", "name"]',
                "model.n_clusters=3", "model.elbow_max_k=4", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    out = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert out["metrics"]["ari"] > 0.9 and "ari" in out["labels_used"]
    run = tmp_path / "unlabelled"
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={p}", "data.task=unlabeled",
                'data.ignore_columns=["id", "name", "species"]', "model.n_clusters=3", "model.elbow_max_k=4",
                "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    out = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert "ari" not in out["metrics"] and out["labels_used"] == [] and out["metrics"]["silhouette"] > 0.5
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={p}", "data.task=unlabeled")
    assert r.returncode == 2 and "column 'name'" in r.stderr and "data.ignore_columns" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2  # error: ... / hint: ...
