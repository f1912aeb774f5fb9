"""Data sources. `build(cfg.data)` picks the registered source of `data.source` (each declares its table and
builder in its own file: bundled, tabular, images, text) and returns an object with the source contract:

    data.info                           what a model needs to know: task, input_shape, num_classes, vocab_size ...
    data.unit, data.count(batch)        what throughput counts ("ex" or "tok") and how many a batch holds
    data.batch_size, data.batches_per_epoch     the global batch (examples) and batches in one pass
    data.stream(seed, policy, plan)     the training stream, created after the model (trainlab.policy.Policy):
        stream.next_step()              this process's micro-batches of the next optimizer step (plan: its share)
        stream.on_step(step, metrics)   after each optimizer step; returns metrics of its own (fixed keys) or {}
        stream.state_dict(), load_state_dict(), epoch        exact resume
    data.validate(policy, limit)        validation metrics on the current model (loop.monitor names one of them)
    data.eval_batches(split, limit)     plain passes over a held-out split (`trainlab eval`)
    data.export(model_dir)              files the model needs beside its weights (a tokenizer)

Arrays (tables and images) share `from_arrays`: split once (seeded, stratified), standardize with training-split
statistics. The test split exists from the start but only `trainlab eval --split test` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from trainlab import registry
from trainlab.config import ArrayTable, DataTable
from trainlab.data.batches import BatchStream, DatasetStream, eval_batches
from trainlab.data.split import split_indices
from trainlab.errors import UserError


@dataclass
class Split:
    x: torch.Tensor  # float32 (N, features) or (N, C, H, W)
    y: torch.Tensor  # int64 (N,) class indices, or float32 (N,) regression targets

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Data:
    splits: dict[str, Split]
    info: dict  # json-serializable: saved beside the model so that it can be rebuilt and fed
    cfg: ArrayTable = field(repr=False)

    unit = "ex"  # what throughput counts

    @property
    def batch_size(self) -> int:
        return min(self.cfg.batch_size, len(self.splits["train"]))

    @property
    def batches_per_epoch(self) -> int:
        return len(self.splits["train"]) // self.batch_size  # the ragged last batch is dropped

    def stream(self, seed: int, policy, plan) -> DatasetStream:
        return DatasetStream(self.train_batches(seed), plan)

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        return validate_dataset(self, policy, limit)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["x"])

    def export(self, model_dir) -> None:
        """Files the model needs beside its weights: none for arrays (the statistics are in config.json)."""

    def train_batches(self, seed: int) -> BatchStream:
        augment = None
        if getattr(self.cfg, "augment", False) and len(self.info["input_shape"]) == 3:
            from trainlab.data.images import RandomAffine

            augment = RandomAffine(self.cfg.augment_shift, self.cfg.augment_degrees)
        return BatchStream(self.splits["train"], self.cfg.batch_size, seed, augment)

    def eval_batches(self, split: str, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return eval_batches(self.splits[split], self.cfg.eval_batch_size, limit)


def validate_dataset(data, policy, limit: int = 0) -> dict[str, float]:
    """The default validation of a fixed dataset: example-weighted means of the loss and the objective's metrics
    over the validation split, through the training wrapper (processes share the batches)."""
    from trainlab.policy import evaluate

    return evaluate(policy.forward, data.eval_batches("val", limit), policy.device, policy.amp, policy.ctx)


def build(cfg: DataTable):
    """The data of the registered source `cfg.source`."""
    return registry.get("source", cfg.source).build(cfg)


def from_arrays(cfg: ArrayTable, x: np.ndarray, y: np.ndarray, meta: dict) -> Data:
    """Raw arrays (x, y) and what is known about them (task, class names, ...) -> split, standardized Data."""
    task = meta["task"] if cfg.task == "auto" else cfg.task
    if len(x) == 0:
        raise UserError(f"the dataset from data.source = '{cfg.source}' is empty", "point data.path at a file with rows")
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise UserError(f"the inputs have NaN or infinite values in {int(bad.sum())} rows (first: row {int(bad.argmax())})",
                        "clean or impute the data before training")

    class_names: list[str] = []
    if task == "unlabeled":
        y = np.full(len(x), -1, dtype=np.int64)  # placeholders: nothing reads them as labels
    elif task == "classification":
        y, class_names = _class_indices(y, meta.get("class_names"), cfg.num_classes)
    else:
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            raise UserError("the regression targets have NaN or infinite values", "clean the target column")

    stratify = y if task == "classification" else None
    idx = split_indices(len(x), cfg.val_fraction, cfg.test_fraction, cfg.split_seed, stratify)
    if cfg.anomaly_class >= 0:
        if task != "classification" or cfg.anomaly_class >= len(class_names):
            raise UserError(f"data.anomaly_class = {cfg.anomaly_class} is not one of the data's classes "
                            f"(0..{len(class_names) - 1})" if task == "classification" else
                            f"data.anomaly_class needs labelled data; this data's task is '{task}'",
                            "pick a class index, or set data.anomaly_class = -1")
        # The anomaly never reaches training; validation and test keep it (to pick a threshold, to score).
        idx["train"] = idx["train"][y[idx["train"]] != cfg.anomaly_class]
    if cfg.subset:
        idx["train"] = idx["train"][: cfg.subset]

    x = x.astype(np.float32)
    info: dict = {"task": task, "input_shape": list(x.shape[1:]), "source": cfg.source,
                  "num_classes": len(class_names), "class_names": class_names,
                  "feature_names": meta.get("feature_names", []), "anomaly_class": cfg.anomaly_class}
    if cfg.standardize:
        # Statistics of the training split only, so nothing leaks from validation or test.
        xt = x[idx["train"]]
        per_feature = x.ndim == 2  # tabular: per column; images: per channel
        axes = (0,) if per_feature else (0, 2, 3)
        mean = xt.mean(axis=axes, keepdims=True)
        std = xt.std(axis=axes, keepdims=True)
        std[std < 1e-8] = 1.0  # constant features stay constant instead of dividing by zero
        x = (x - mean) / std
        info["x_mean"], info["x_std"] = mean.reshape(-1).tolist(), std.reshape(-1).tolist()
        if task == "regression":  # the model predicts z-scores; evaluation maps them back
            ym, ys = float(y[idx["train"]].mean()), float(y[idx["train"]].std() or 1.0)
            y = (y - ym) / ys
            info["y_mean"], info["y_std"] = ym, ys

    y_t = torch.from_numpy(y.astype(np.float32) if task == "regression" else y.astype(np.int64))
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    splits = {name: Split(x_t[torch.from_numpy(i)], y_t[torch.from_numpy(i)]) for name, i in idx.items()}
    info["split_sizes"] = {name: len(s) for name, s in splits.items()}
    return Data(splits, info, cfg)


def _class_indices(y: np.ndarray, names: list[str] | None, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """Map labels to 0..K-1. Integer labels are kept as they are (and checked against data.num_classes)."""
    if y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        y = y.astype(np.int64)
        k = num_classes or (len(names) if names else int(y.max()) + 1)
        out = (y < 0) | (y >= k)
        if out.any():
            i = int(out.argmax())
            raise UserError(f"label {int(y[i])} (example {i}) is outside the classes 0..{k - 1}",
                            "fix the label, or set data.num_classes to the true number of classes")
        return y, list(names) if names else [str(c) for c in range(k)]
    uniq = sorted({str(v) for v in y})  # string labels: classes in sorted order
    if num_classes and len(uniq) > num_classes:
        raise UserError(f"found {len(uniq)} distinct labels but data.num_classes = {num_classes}",
                        "fix the labels or data.num_classes")
    lookup = {name: i for i, name in enumerate(uniq)}
    return np.array([lookup[str(v)] for v in y], dtype=np.int64), uniq
