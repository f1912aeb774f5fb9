"""LoRA (Hu et al., 2021): train a low-rank update B @ A beside each chosen linear layer's frozen weight.

    y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank          A: (rank, in), B: (out, rank), B starts at 0

so the adapted model starts exactly where the pre-trained one was. Only A and B (and a new task head) train;
`merged_state_dict` folds B @ A * alpha / rank into W for export. An adapted layer keeps its parameter names (`qkv.weight`,
`qkv.bias`) and adds `qkv.lora_A`, `qkv.lora_B`, so pre-trained weights load into it by name.

`[model.lora]` in a recipe (rank 0 = no adapters):

    [model.lora]
    rank = 8
    alpha = 16.0
    dropout = 0.05
    targets = ["attn"]     # a linear layer is adapted when one of its name's parts (or a dotted tail) is listed
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab.config import Table
from trainlab.errors import UserError


class LoRAConfig(Table):
    rank: int = Field(0, ge=0)  # rank of each update B @ A (0 = no adapters: train the whole model)
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input
    # Linear layers to adapt: a layer is chosen when one part of its dotted name (or a dotted tail) is listed,
    # e.g. "attn" (every attention projection), "qkv", "mlp", "blocks.3.mlp.down".
    targets: list[str] = ["attn"]


class LoRALinear(nn.Linear):
    """nn.Linear plus a trainable low-rank update; the base weight and bias are the original layer's tensors."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        self.lora_drop = nn.Dropout(dropout)
        self.enabled = True  # False: the base layer alone (`adapters_off`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        return y + F.linear(F.linear(self.lora_drop(x), self.lora_A), self.lora_B) * self.scale

    def delta(self) -> torch.Tensor:
        """The update B @ A * alpha / rank, shaped like the weight."""
        return (self.lora_B @ self.lora_A) * self.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lora_rank={self.rank}"


def _chosen(name: str, targets: list[str]) -> bool:
    parts = name.split(".")
    return any(t in parts or name.endswith("." + t) or name == t for t in targets)


def apply(model: nn.Module, cfg: LoRAConfig, keep_trainable: tuple[str, ...] = ()) -> list[str]:
    """Adapt the chosen linear layers of `model` in place and freeze everything else except parameters under the
    `keep_trainable` prefixes (a new task head). Returns the adapted layers' names."""
    if not cfg.rank:
        return []
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
    chosen = [n for n in linears if _chosen(n, cfg.targets)]
    if not chosen:
        groups = sorted({n.split(".")[-1] for n in linears} | {p for n in linears for p in n.split(".")[:-1]
                                                              if not p.isdigit()})
        raise UserError(f"model.lora.targets = {cfg.targets} match no linear layer of this model",
                        f"name a part of a linear layer's name: {', '.join(groups)}")
    for n in chosen:
        layer = linears[n]
        if cfg.rank > min(layer.in_features, layer.out_features):
            raise UserError(f"model.lora.rank = {cfg.rank} is larger than the layer {n} "
                            f"({layer.in_features} -> {layer.out_features}): its rank is at most "
                            f"{min(layer.in_features, layer.out_features)}", "lower model.lora.rank")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linears[n], cfg.rank, cfg.alpha, cfg.dropout))
    for n, p in model.named_parameters():
        if ".lora_" in n or any(n.startswith(k) for k in keep_trainable):
            p.requires_grad_(True)
    return chosen


def layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextmanager
def adapters_off(model: nn.Module):
    """The base model inside the block: a LoRA policy's reference, with no second copy of the weights."""
    found = layers(model).values()
    for m in found:
        m.enabled = False
    try:
        yield model
    finally:
        for m in found:
            m.enabled = True


def is_adapter(name: str) -> bool:
    return ".lora_A" in name or ".lora_B" in name


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every update folded in and the adapter tensors left out: a plain model's
    state dict, for export."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not is_adapter(k)}
    for n, m in layers(model).items():
        sd[f"{n}.weight"] = (m.weight + m.delta().to(m.weight.dtype)).detach().clone()
    return sd


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run adds to its base model: the adapters, a classifier's new head, and any other tensor that
    did not come from the base (`fresh_tensors`, set by models.load_initial_weights)."""
    heads = tuple(model.head_prefixes()) if getattr(model, "classify", False) else ()
    fresh = set(getattr(model, "fresh_tensors", ()))
    return {n: t.detach().contiguous() for n, t in model.state_dict().items()
            if is_adapter(n) or (heads and n.startswith(heads)) or n in fresh}
