"""Optimizers with parameter groups, and learning-rate schedules as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainlab.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only: decaying biases and norm gains just shrinks them
    toward zero without regularizing anything (the convention of BERT, GPT-2 and nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
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
    for g in optimizer.param_groups:
        g["lr"] = lr
