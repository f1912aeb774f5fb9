"""Optimizers with parameter groups, and learning-rate schedules as a pure function of the step."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from trainlab.config import OptimConfig, ScheduleConfig
from trainlab.errors import UserError


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDINGS = ("wte.", "wpe.", "wtt.", "emb_norm.")


def layer_depths(model: nn.Module, what: str) -> dict[str, int]:
    """Each parameter's layer from the bottom: 0 the embeddings, i + 1 Transformer block i, the top (the final
    norm and the head) n_blocks + 1. For discriminative rates and gradual unfreezing."""
    names = [n for n, _ in model.named_parameters()]
    blocks = [int(m.group(1)) for n in names if (m := _BLOCK.search(n))]
    if not blocks:
        raise UserError(f"{what} needs a model made of Transformer blocks (model.kind 'gpt' or 'encoder'); this one "
                        f"has none", f"remove {what}")
    top = max(blocks) + 2
    return {n: int(m.group(1)) + 1 if (m := _BLOCK.search(n)) else 0 if n.startswith(_EMBEDDINGS) else top
            for n in names}


class Unfreezer:
    """optim.unfreeze_every: before step s, the top 1 + s // every layers (of layer_depths) train; the rest
    keep requires_grad off, so they get no gradient and the optimizer leaves them (and their state) alone.
    A function of the step alone: a resumed run unfreezes exactly as the uninterrupted one."""

    def __init__(self, model: nn.Module, every: int):
        depth = layer_depths(model, "optim.unfreeze_every")
        self.every = every
        self.params = [(depth[n], p) for n, p in model.named_parameters() if p.requires_grad]
        # The layers that have something to train (LoRA adapters live in the blocks only; optim.freeze may take
        # the top): the first period trains the highest of them.
        self.depths = sorted({d for d, _ in self.params}, reverse=True)
        self.layers = -1

    def __call__(self, step: int) -> int:
        layers = min(len(self.depths), 1 + step // self.every)
        if layers != self.layers:
            lowest = self.depths[layers - 1]
            for d, p in self.params:
                p.requires_grad_(d >= lowest)
            self.layers = layers
        return layers


def param_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float] | None = None,
                 layer_decay: float = 1.0) -> list[dict]:
    """Weight decay on matrices and conv kernels only: decaying biases and norm gains just shrinks them
    toward zero without regularizing anything (the convention of BERT, GPT-2 and nanoGPT). With `lr_mult`
    ({name prefix: multiplier}, the longest matching prefix wins) each multiplier gets groups of its own,
    which `set_lr` scales; `layer_decay` < 1 multiplies layer d's rate by layer_decay ** (top - d).
    Frozen parameters (requires_grad False) are left out."""
    lr_mult = lr_mult or {}
    depth = layer_depths(model, "optim.layer_decay") if layer_decay != 1 else {}
    top = max(depth.values(), default=0)
    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in lr_mult if not any(n.startswith(p) for n in names)]
    if unused:
        raise UserError(f"optim.lr_mult names {unused}, which match no parameter of this model",
                        f"use prefixes of parameter names; its top-level modules are {sorted({n.split('.')[0] for n in names})}")
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():  # a tied tensor is listed once
        if not p.requires_grad:
            continue
        prefix = max((q for q in lr_mult if name.startswith(q)), key=len, default=None)
        mult = (lr_mult[prefix] if prefix is not None else 1.0) * layer_decay ** (top - depth.get(name, top))
        key = (p.ndim >= 2, mult)
        groups.setdefault(key, []).append(p)
    if not lr_mult and layer_decay == 1:  # the two classic groups, always in this order (checkpoints rely on it)
        groups.setdefault((True, 1.0), [])
        groups.setdefault((False, 1.0), [])
        order = [(True, 1.0), (False, 1.0)]
    else:
        order = sorted(groups, key=lambda k: (-k[0], k[1]))
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_mult": k[1]} for k in order]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr_mult, cfg.layer_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    # The fused kernel (one pass over all parameters per step) where torch has it: CPU and CUDA.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """The multiplier of optim.lr at optimizer step `step` (0-based) of `total`.

    warm-up:  (step + 1) / warmup_steps              for step < warmup_steps
    cosine:   m + (1 - m) * (1 + cos(pi * t)) / 2    t = progress through the decay, 0 -> 1
    linear:   m + (1 - m) * (1 - t)
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    decay_steps = max(1, total - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    m = cfg.min_lr_ratio
    if cfg.name == "cosine":
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))
    return m + (1 - m) * (1 - t)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step, times each group's optim.lr_mult."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
