"""Scaling points: (parameters N, tokens D, FLOPs C, loss L) read from a CSV file, checked once.

A sweep folder's points.csv and a table of published measurements (e.g. Epoch AI's extraction of Hoffmann et
al.'s Figure 4: columns `Model Size`, `Training FLOP`, `loss`) read the same way: D is FLOP / (6 N) when a file
gives FLOPs but no tokens, and C is 6 N D when it gives tokens but no FLOPs."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainlab.errors import UserError

# Column names accepted for each quantity (first match wins; case and spaces ignored).
ALIASES = {
    "params": ("params", "n", "modelsize", "parameters", "nonembeddingparams"),
    "tokens": ("tokens", "d", "trainingtokens", "datasetsize"),
    "flops": ("flops", "c", "trainingflop", "trainingflops", "compute"),
    "loss": ("loss", "l", "finalloss", "valloss"),
}


@dataclass
class Points:
    """Arrays of equal length; `final` marks a run's last point (False: a point of its training curve);
    `run` names the run a point belongs to (empty for a table of published measurements)."""

    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    final: np.ndarray
    run: list[str]
    source: str = ""
    params_are: str = "parameters"  # what N counts: "non-embedding parameters" in a sweep's points.csv


    def __len__(self) -> int:
        return len(self.loss)

    def select(self, keep: np.ndarray) -> "Points":
        keep = np.asarray(keep, bool)
        return Points(self.params[keep], self.tokens[keep], self.flops[keep], self.loss[keep], self.final[keep],
                      [r for r, k in zip(self.run, keep) if k], self.source, self.params_are)

    def finals(self) -> "Points":
        return self.select(self.final)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def read_csv(path: str | Path) -> Points:
    """Read and check a CSV of scaling points; every bad value is an error naming its row and column."""
    path = Path(path)
    if path.is_dir():
        if not (path / "points.csv").is_file():
            raise UserError(f"{path} is a folder without points.csv",
                            "give a CSV file, or a sweep folder that `trainlab scaling sweep` wrote")
        path = path / "points.csv"
    if not path.is_file():
        raise UserError(f"{path} does not exist", "give the path of a CSV file of scaling points")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})", "save the CSV as UTF-8") from None
    lines = text.splitlines()
    header = {_key(h): h for h in next(csv.reader(lines), [])}
    rows = list(csv.DictReader(lines))
    col = {q: next((header[a] for a in names if a in header), None) for q, names in ALIASES.items()}
    if col["params"] is None or col["loss"] is None or (col["tokens"] is None and col["flops"] is None):
        raise UserError(f"{path} needs columns for parameters, loss, and tokens or FLOPs; it has "
                        f"{', '.join(repr(h) for h in header.values()) or 'none'}",
                        "name them params, tokens (or flops) and loss, e.g. params,tokens,loss")
    if not rows:
        raise UserError(f"{path} has a header but no points", "add one row per trained model")
    values: dict[str, list[float]] = {q: [] for q in col if col[q]}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        for q, c in col.items():
            if c is None:
                continue
            raw = (row.get(c) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and v > 0):
                raise UserError(f"{path} line {i}: {c} must be a positive finite number; got {raw!r}",
                                "fix or remove that row: a scaling law is fitted in log space")
            values[q].append(v)
    n = np.array(values["params"])
    d = np.array(values["tokens"]) if "tokens" in values else np.array(values["flops"]) / (6 * n)
    c = np.array(values["flops"]) if "flops" in values else 6 * n * d
    final = np.array([(row.get("final") or "1").strip() not in ("0", "false", "False") for row in rows])
    run = [(row.get("run") or "").strip() for row in rows]
    # A sweep's points.csv counts non-embedding parameters (Kaplan's N) beside the total (params_total).
    are = "non-embedding parameters" if "paramstotal" in header and col["params"] == header.get("params") \
        else f"column '{col['params']}'"
    return Points(n, d, c, np.array(values["loss"]), final, run, source=str(path), params_are=are)
