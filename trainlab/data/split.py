"""One fixed, seeded train/validation/test split (stratified by class for classification)."""

from __future__ import annotations

import numpy as np

from trainlab.errors import UserError


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int,
                  stratify: np.ndarray | None = None) -> dict[str, np.ndarray]:
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1 or n_val < 1 or (test_fraction > 0 and n_test < 1):
        raise UserError(f"{n} examples are too few for val_fraction={val_fraction} and test_fraction={test_fraction}",
                        "add data, or change data.val_fraction / data.test_fraction")
    from sklearn.model_selection import train_test_split  # imported on first use: start-up stays fast

    idx = np.arange(n)
    if stratify is not None and not _can_stratify(stratify, n_test, n_val):
        stratify = None  # a class with a single example cannot be split by class; fall back to plain shuffling
    rest, test = (idx, idx[:0]) if n_test == 0 else train_test_split(
        idx, test_size=n_test, random_state=seed, stratify=stratify)
    strat_rest = stratify[rest] if stratify is not None else None
    train, val = train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=strat_rest)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _can_stratify(labels: np.ndarray, n_test: int, n_val: int) -> bool:
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return counts.min() >= 3 and min(n_test or len(counts), n_val) >= len(counts)
