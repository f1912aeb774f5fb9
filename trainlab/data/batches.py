"""Batches: an endless, seeded training stream that can resume exactly, and plain evaluation passes.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), and batch b's augmentation
from (seed, e, b), so the stream's whole state is two integers: {"epoch", "batch"}.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class BatchStream:
    def __init__(self, split, batch_size: int, seed: int, transform: Transform | None = None):
        self.split, self.seed, self.transform = split, seed, transform
        n = len(split)
        self.batch_size = min(batch_size, n)
        self.batches_per_epoch = n // self.batch_size  # drop the ragged last batch: every step sees B examples
        self.epoch, self.batch = 0, 0
        self._order: torch.Tensor | None = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
        if self._order is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(len(self.split), generator=g)
        i = self._order[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        x, y = self.split.x[i], self.split.y[i]
        if self.transform is not None:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + self.batch)
            x = self.transform(x, g)
        self.batch += 1
        return {"x": x, "y": y}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._order = int(state["epoch"]), int(state["batch"]), None


def eval_batches(split, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """The split in order, in batches of batch_size; at most `limit` batches when limit > 0."""
    for k, start in enumerate(range(0, len(split), batch_size)):
        if limit and k >= limit:
            return
        yield {"x": split.x[start:start + batch_size], "y": split.y[start:start + batch_size]}
