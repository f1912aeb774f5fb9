"""The model being trained, as the data source sees it.

Sources that need the current model (RL rollouts, an epsilon-greedy actor, RLHF generations, GRPO groups, and
validation of every kind) get a `Policy` when the loop creates them, after the model is built and wrapped:

    policy(x)                    the model's forward on the current weights: eval mode, no gradients, autocast
    policy.generate(prompts)     batched generation (trainlab.generate.generate) on the current weights
    policy.loss(batch)           the objective through the training wrapper (DDP/FSDP): (loss, metrics)
    policy.objective             the objective itself: a source reads what it asks for (`uses_reference`) and
                                 calls its no-gradient hooks (`prepare(rollout)`: advantages from rewards)
    with policy.gathered() as m: m is the whole model, for several calls in a row

Under FSDP the weights are sharded; `gathered` all-gathers every unit once and keeps it whole until the block
ends, so that ranks may make different numbers of calls (generations of different lengths) without collectives.
The loop validates through `data.validate(policy, limit)`; `evaluate` below is what datasets use.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn


class Policy:
    def __init__(self, model: nn.Module, forward: nn.Module, device: torch.device, amp, ctx, objective=None,
                 init_from: str = ""):
        self.model, self.forward, self.device, self.amp, self.ctx = model, forward, device, amp, ctx
        self.init_from = init_from  # the trained model this one started from (a frozen reference is that one)
        self.objective = objective  # what the source may ask of it (e.g. `uses_reference`, `prepare`)

    def loss(self, batch: dict[str, torch.Tensor]):
        return self.forward(batch)

    @contextmanager
    def gathered(self):
        """The whole model on this rank, in eval mode, without gradients, under autocast."""
        fsdp = _fsdp_modules(self.forward)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.amp:
                if not fsdp:
                    yield self.model
                    return
                self.forward.set_reshard_after_forward(False)  # every unit stays gathered after its forward
                for m in fsdp:
                    m.unshard()
                yield _ThroughRoot(self.forward)
        finally:
            self.model.train(was_training)
            if fsdp:
                self.forward.set_reshard_after_forward(True)
                self.forward.set_reshard_after_forward(False, recurse=False)  # FSDP's own setting for the root
                for m in fsdp:
                    m.reshard()

    def __call__(self, *args, **kwargs):
        with self.gathered() as m:
            return m(*args, **kwargs)

    def generate(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        from trainlab.generate import generate

        with self.gathered() as m:
            return generate(m, prompts, **kwargs)


class _ThroughRoot(nn.Module):
    """Calls into an FSDP-wrapped model go through the root's forward (which FSDP hooks), as `run`."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root

    def __getattr__(self, name: str):
        if name in ("root", "_modules", "_parameters", "_buffers"):
            return super().__getattr__(name)
        inner = getattr(self.root.model, name)
        if not callable(inner) or name in ("parameters", "named_parameters", "modules", "state_dict"):
            return inner
        return lambda *a, **k: self.root(None, run=lambda model, _: getattr(model, name)(*a, **k))

    def forward(self, *args, **kwargs):
        return self.root(None, run=lambda model, _: model(*args, **kwargs))


def _fsdp_modules(module: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@torch.no_grad()
def evaluate(forward: Callable, batches, device, amp, ctx=None) -> dict[str, float]:
    """Example-weighted means of the loss and the objective's metrics over `batches`, in eval mode.
    `forward` maps a batch to (loss, metrics): an objective.LossModule, or the loop's wrapped one. With several
    processes each takes every world-th batch and the sums are added up; all ranks run the same number of
    forward passes (a rank out of batches repeats one with weight 0), as sharded models need."""
    world, rank = (ctx.world, ctx.rank) if ctx else (1, 0)
    was_training = forward.training
    forward.eval()
    sums: dict[str, torch.Tensor] = {}
    n = 0
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    source = iter(batches)
    spare = next(source, None)
    mine = itertools.islice(itertools.chain([spare], source), rank, None, world) if spare is not None else iter(())
    while True:
        batch = next(mine, None)
        more = batch is not None
        if not (ctx.any(more) if world > 1 else more):
            break
        weight = 1 if batch is not None else 0
        batch = {k: v.to(device, non_blocking=True) for k, v in (batch if batch is not None else spare).items()}
        b = len(next(iter(batch.values())))
        with amp:
            loss, metrics = forward(batch)
        for k, v in {"loss": loss, **metrics}.items():  # summed on the device; read once at the end
            v = torch.as_tensor(v, dtype=acc, device=device).detach()
            sums[k] = sums.get(k, 0.0) + v * (b * weight)
        n += b * weight
    forward.train(was_training)
    if hasattr(forward, "reshard"):  # FSDP keeps the root's weights gathered after a forward without backward
        forward.reshard()
    if not sums:
        return {}
    values = torch.stack(list(sums.values())).tolist()
    if world > 1:
        values = ctx.sum([*values, n])
        values, n = values[:-1], values[-1]
    return {k: v / max(n, 1) for k, v in zip(sums, values)}
