"""Real datasets that ship with scikit-learn: no download, on every machine."""

from __future__ import annotations

from typing import Literal

import numpy as np

from trainlab import registry
from trainlab.config import ArrayTable, ImageTable


class DigitsData(ImageTable):
    source: Literal["digits"] = "digits"


class BundledTable(ArrayTable):
    source: Literal["breast_cancer", "diabetes"]


@registry.source("digits", DigitsData, provides={"features", "images", "labels"})
def build_digits(cfg: DigitsData):
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels, 10 classes."""
    from trainlab.data import from_arrays

    return from_arrays(cfg, *load_bundled("digits"))


@registry.source("breast_cancer", BundledTable, provides={"features", "labels"})
def build_breast_cancer(cfg: BundledTable):
    """scikit-learn's Wisconsin breast-cancer table: 569 tumours, 30 measurements, malignant or benign."""
    from trainlab.data import from_arrays

    return from_arrays(cfg, *load_bundled("breast_cancer"))


@registry.source("diabetes", BundledTable, provides={"features", "labels"})
def build_diabetes(cfg: BundledTable):
    """scikit-learn's diabetes table: 442 patients, 10 variables, disease progression (regression)."""
    from trainlab.data import from_arrays

    return from_arrays(cfg, *load_bundled("diabetes"))


def load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn import datasets  # imported on first use: `trainlab` starts (and reports a typo) fast

    if name == "digits":
        # 1,797 handwritten digits, 8x8 pixels with values 0..16, 10 classes.
        d = datasets.load_digits()
        x = (d.images / 16.0)[:, None, :, :]  # (N, 1, 8, 8)
        return x, d.target, {"task": "classification", "class_names": [str(c) for c in d.target_names]}
    if name == "breast_cancer":
        # 569 tumours, 30 measurements each, malignant (0) or benign (1).
        d = datasets.load_breast_cancer()
        return d.data, d.target, {"task": "classification", "class_names": list(d.target_names),
                                  "feature_names": list(d.feature_names)}
    if name == "diabetes":
        # 442 patients, 10 baseline variables, target: disease progression one year later.
        d = datasets.load_diabetes(scaled=False)
        return d.data, d.target, {"task": "regression", "feature_names": list(d.feature_names)}
    raise ValueError(name)  # config validation only lets the names above through
