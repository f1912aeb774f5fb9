"""Users' tables: a CSV file with a header row; one column is the target, every other column a numeric feature
(columns named in data.ignore_columns are left out: an id, a name)."""

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
    target: str = ""  # the target column (default: the last column not ignored; none with task = "unlabeled")
    ignore_columns: list[str] = []  # columns left out entirely, e.g. ["id", "name"]: neither feature nor target


@registry.source("csv", CSVData, provides={"features", "labels?"})
def build(cfg: CSVData):
    """Your CSV file: numeric feature columns and a target column (classes or numbers), or no target."""
    from trainlab.data import from_arrays

    if not cfg.path:
        raise UserError("data.source = 'csv' needs data.path", "add data.path=/path/to/your/file.csv")
    return from_arrays(cfg, *load_csv(cfg.path, cfg.target, cfg.task, cfg.ignore_columns))


def read_rows(path: str | Path, missing_hint: str = "give the path of a CSV file") -> tuple[list[str], list[list[str]]]:
    """The header and the non-empty rows of a UTF-8 CSV file (training and `trainlab predict` read it alike)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"CSV file {path} does not exist", missing_hint)
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read CSV file {path}: {str(e).splitlines()[0][:120]}",
                        "give a UTF-8 CSV file with a header row") from None
    if len(rows) < 2:
        raise UserError(f"CSV file {path} has no data rows", "give a header row and at least one row of values")
    return rows[0], rows[1:]


def load_csv(path: str, target: str, task: str, ignore: list[str] | tuple[str, ...] = ()) -> \
        tuple[np.ndarray, np.ndarray, dict]:
    header, body = read_rows(path, "check data.path")
    asked = target
    missing = [c for c in ignore if c not in header]
    if missing:
        raise UserError(f"data.ignore_columns names {', '.join(map(repr, missing))}, not a column of {path}; its "
                        f"columns are {header}", "name columns of the header row in data.ignore_columns")
    kept = [c for c in range(len(header)) if header[c] not in ignore]
    if not kept:
        raise UserError(f"data.ignore_columns leaves no column of {path}", "ignore fewer columns")
    target = target or header[kept[-1]]
    if task == "unlabeled":
        target = ""  # every column not ignored is a feature
    elif target in ignore:
        raise UserError(f"the target column '{target}' is also in data.ignore_columns",
                        "remove it from data.ignore_columns, or set data.target to another column")
    elif target not in header:
        raise UserError(f"target column '{target}' is not in {path}; its columns are {header}", "set data.target")
    t = header.index(target) if target else -1
    features = [c for c in kept if c != t]
    if not features:
        raise UserError(f"no feature column is left in {path}: its columns are {header}"
                        + (f", '{target}' is the target" if target else "") + f", {list(ignore)} are ignored",
                        "keep at least one numeric column besides the target")
    x = numeric_columns(path, header, body, features, asked)
    names = [header[c] for c in features]
    if t < 0:
        return x, np.full(len(body), -1), {"task": "unlabeled", "feature_names": names}
    labels = [r[t] for r in body]
    y, inferred = _target(labels, task)
    return x, y, {"task": inferred, "feature_names": names}


def numeric_columns(path, header: list[str], body: list[list[str]], cols: list[int], asked: str = "") -> np.ndarray:
    """The columns `cols` of a CSV's rows as numbers, (rows, len(cols)) float64; a short row, an empty cell or
    text is one error naming the row and column (training and `trainlab predict` read CSVs alike)."""
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise UserError(f"{path} row {i + 2} has {len(r)} values, the header has {len(header)}",
                            "fix the row so every row has one value per column")
    x = np.empty((len(body), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        for i, r in enumerate(body):
            try:
                x[i, j] = float(r[c])
            except ValueError:
                if not r[c].strip():  # a missing value: trainlab does not impute
                    empty = sum(not row[c].strip() for row in body)
                    raise UserError(f"column '{header[c]}' of {path} has {empty} empty cell{'s' * (empty > 1)} (first: "
                                    f"row {i + 2}); missing values are not filled in",
                                    "impute them (e.g. the column's median) or drop those rows, or leave the column "
                                    f"out with 'data.ignore_columns=[\"{header[c]}\"]'") from None
                hint = f"encode it as numbers, or leave it out with 'data.ignore_columns=[\"{header[c]}\"]'"
                if header[c] == asked:  # task = "unlabeled" with a target: the target counts as a feature
                    hint = ("to score clusters against its labels, drop data.task=unlabeled (the target is kept "
                            f"aside as labels); or leave it out with 'data.ignore_columns=[\"{header[c]}\"]'")
                raise UserError(f"column '{header[c]}' of {path} is not numeric: row {i + 2} holds {r[c]!r}",
                                hint) from None
    return x


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
