"""Metrics of a finished model on one split, beside a baseline that ignores the inputs.

Every number needs something to beat: the majority class for classification, the training mean for regression.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    labels = list(range(len(class_names)))
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "f1_macro": float(f.mean()),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {
        "mse": float(skm.mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
    }


def baseline(task: str, y_train: np.ndarray, y_true: np.ndarray, class_names: list[str]) -> dict:
    """The best constant prediction learned from the training labels alone."""
    if task == "classification":
        majority = int(np.bincount(y_train, minlength=len(class_names)).argmax())
        out = classification(y_true, np.full_like(y_true, majority), class_names)
        return {"name": f"majority class ({class_names[majority]})", **out}
    mean = float(y_train.mean())
    return {"name": f"training mean ({mean:.4g})", **regression(y_true, np.full_like(y_true, mean))}
