"""Optimizers with parameter groups, and learning-rate schedules as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainlab.config import OptimConfig, ScheduleConfig
from trainlab.errors import UserError


def param_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """Weight decay on matrices and conv kernels only: decaying biases and norm gains just shrinks them
    toward zero without regularizing anything (the convention of BERT, GPT-2 and nanoGPT). With `lr_mult`
    ({name prefix: multiplier}, the longest matching prefix wins) each multiplier gets groups of its own,
    which `set_lr` scales. Frozen parameters (requires_grad False) are left out."""
    lr_mult = lr_mult or {}
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
        key = (p.ndim >= 2, lr_mult[prefix] if prefix is not None else 1.0)
        groups.setdefault(key, []).append(p)
    if not lr_mult:  # the two classic groups, always in this order (checkpoints rely on it)
        groups.setdefault((True, 1.0), [])
        groups.setdefault((False, 1.0), [])
        order = [(True, 1.0), (False, 1.0)]
    else:
        order = sorted(groups, key=lambda k: (-k[0], k[1]))
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_mult": k[1]} for k in order]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr_mult)
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
