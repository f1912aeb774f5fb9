"""Batches: an endless, seeded training stream that can resume exactly, and plain evaluation passes.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), and batch b's augmentation
from (seed, e, b), so the stream's whole state is two integers: {"epoch", "batch"}.

Batches are counted globally: batch b is the same examples however many processes train. `next_step` hands
one process its share of an optimizer step (see trainlab.distributed), so 1 process and N processes with the
same global batch see the same examples, and a checkpoint resumes with any number of processes.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch


class Augmentation(Protocol):
    def draw(self, n: int, g: torch.Generator) -> torch.Tensor: ...  # (n, ...) random parameters, one row each

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor: ...


class GlobalBatches:
    """An endless stream of global batches of `batch_size` examples. A subclass says which examples batch k
    holds (`_draw`: ids, plus per-example parameters such as augmentations) and how to fetch them (`_fetch`)."""

    batch_size: int

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _fetch(self, ids: torch.Tensor, params: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self._fetch(*self._draw())

    def next_step(self, batches: int, lo: int, hi: int, parts: int) -> list[dict[str, torch.Tensor]]:
        """Examples lo..hi-1 of the next `batches` global batches laid end to end, in `parts` equal micro-batches.
        Every process advances by the same `batches`; only its own slice is fetched. One process: lo = 0,
        hi = batches * batch_size, parts = batches gives the global batches themselves."""
        drawn = [self._draw() for _ in range(batches)]
        ids = torch.cat([d[0] for d in drawn])[lo:hi]
        params = torch.cat([d[1] for d in drawn])[lo:hi] if drawn[0][1] is not None else None
        n = (hi - lo) // parts
        return [self._fetch(ids[i * n:(i + 1) * n], None if params is None else params[i * n:(i + 1) * n])
                for i in range(parts)]


def micro_batches(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """A process's share of a step (tensors with the same first dimension) in `parts` equal micro-batches."""
    n = len(next(iter(batch.values()))) // parts
    return [{k: v[i * n:(i + 1) * n] for k, v in batch.items()} for i in range(parts)]


class BatchStream(GlobalBatches):
    def __init__(self, split, batch_size: int, seed: int, augment: Augmentation | None = None):
        self.split, self.seed, self.augment = split, seed, augment
        n = len(split)
        self.batch_size = min(batch_size, n)
        self.batches_per_epoch = n // self.batch_size  # drop the ragged last batch: every step sees B examples
        self.epoch, self.batch = 0, 0
        self._order: torch.Tensor | None = None

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
        if self._order is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(len(self.split), generator=g)
        ids = self._order[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        params = None
        if self.augment is not None:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + self.batch)
            params = self.augment.draw(len(ids), g)
        self.batch += 1
        return ids, params

    def _fetch(self, ids: torch.Tensor, params: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x, y = self.split.x[ids], self.split.y[ids]
        if params is not None:
            x = self.augment.apply(x, params)
        return {"x": x, "y": y}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._order = int(state["epoch"]), int(state["batch"]), None


class DatasetStream:
    """The loop's stream over a fixed dataset: this process's share of each step's global batches (`plan`, from
    trainlab.distributed); the current model is not needed, and nothing happens after a step."""

    def __init__(self, batches: GlobalBatches, plan):
        self.batches, self.plan = batches, plan

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        p = self.plan
        return self.batches.next_step(p.batches, p.lo, p.hi, p.accum)

    def on_step(self, step: int, metrics: dict) -> dict[str, float]:
        return {}

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def eval_batches(split, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """The split in order, in batches of batch_size; at most `limit` batches when limit > 0."""
    for k, start in enumerate(range(0, len(split), batch_size)):
        if limit and k >= limit:
            return
        yield {"x": split.x[start:start + batch_size], "y": split.y[start:start + batch_size]}
