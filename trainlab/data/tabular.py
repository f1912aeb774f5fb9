"""Users' tables: a CSV file with a header row; one column is the target, every other column a numeric feature."""

from __future__ import annotations

import csv
from pathlib import Path

from typing import Literal

import numpy as np

from trainlab import registry
from trainlab.config import ArrayTable
from trainlab.errors import UserError


class CSVData(ArrayTable):
    source: Literal["csv"] = "csv"
    path: str = ""  # the CSV file (a header row)
    target: str = ""  # the target column (default: the last column; none with task = "unlabeled")


@registry.source("csv", CSVData, provides={"features", "labels?"})
def build(cfg: CSVData):
    """Your CSV file: numeric feature columns and a target column (classes or numbers), or no target."""
    from trainlab.data import from_arrays

    if not cfg.path:
        raise UserError("data.source = 'csv' needs data.path", "add data.path=/path/to/your/file.csv")
    return from_arrays(cfg, *load_csv(cfg.path, cfg.target, cfg.task))


def load_csv(path: str, target: str, task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"CSV file {path} does not exist", "check data.path")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read CSV file {path}: {e}", "give a UTF-8 CSV file with a header row") from None
    if len(rows) < 2:
        raise UserError(f"CSV file {path} has no data rows", "give a header row and at least one row of values")
    header, body = rows[0], rows[1:]
    target = target or header[-1]
    if task == "unlabeled":
        target = ""  # every column is a feature
    elif target not in header:
        raise UserError(f"target column '{target}' is not in {path}; its columns are {header}", "set data.target")
    t = header.index(target) if target else -1
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise UserError(f"{path} row {i + 2} has {len(r)} values, the header has {len(header)}",
                            "fix the row so every row has one value per column")
    features = [c for c in range(len(header)) if c != t]
    x = np.empty((len(body), len(features)), dtype=np.float64)
    for j, c in enumerate(features):
        for i, r in enumerate(body):
            try:
                x[i, j] = float(r[c])
            except ValueError:
                raise UserError(f"column '{header[c]}' of {path} is not numeric: row {i + 2} holds {r[c]!r}",
                                "encode it as numbers or remove the column") from None
    if t < 0:
        return x, np.full(len(body), -1), {"task": "unlabeled", "feature_names": header}
    labels = [r[t] for r in body]
    y, inferred = _target(labels, task)
    return x, y, {"task": inferred, "feature_names": [header[c] for c in features]}


def _target(labels: list[str], task: str) -> tuple[np.ndarray, str]:
    try:
        values = np.array([float(v) for v in labels])
    except ValueError:
        if task == "regression":
            bad = next(v for v in labels if not _is_float(v))
            raise UserError(f"regression target holds a non-number: {bad!r}", "set data.task = 'classification'") from None
        return np.array(labels, dtype=object), "classification"
    if task == "auto":
        # Whole numbers with few distinct values are class labels; anything else is a quantity to regress.
        few = len(np.unique(values)) <= max(2, min(50, len(values) // 5))
        task = "classification" if np.all(np.mod(values, 1) == 0) and few else "regression"
    if task == "classification" and not np.all(np.mod(values, 1) == 0):
        return np.array(labels, dtype=object), task
    return values, task


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
