"""Models are plain nn.Modules. `build` makes one from a recipe's [model] table and the data's info;
`load` rebuilds a trained one from a run's model/ folder (model.safetensors + config.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from trainlab.config import CLASSICAL_KINDS, ModelConfig
from trainlab.errors import UserError


def build(cfg: ModelConfig, info: dict) -> nn.Module:
    shape = info.get("input_shape", [])
    if cfg.kind in ("autoencoder", "vae"):
        from trainlab.models.autoencoder import AutoEncoder

        if cfg.arch == "conv" and len(shape) != 3:
            raise UserError(f"model.arch = 'conv' needs images (C, H, W); this data has inputs of shape {shape}",
                            "use model.arch = 'mlp' for tabular data")
        return AutoEncoder(shape, cfg.latent_dim, cfg.arch, cfg.hidden, cfg.channels, cfg.kind == "vae",
                           cfg.activation)
    if cfg.kind == "gpt" or "vocab_size" in info:
        from trainlab.models.gpt import GPT, GPTConfig

        if "vocab_size" not in info or cfg.kind != "gpt":
            raise UserError(f"model.kind = '{cfg.kind}' with data of task '{info['task']}': language models need "
                            "model.kind = 'gpt' and text data", "pair gpt with data.source stdlib, text, jsonl or hf_disk")
        if cfg.n_embd % cfg.n_head or (cfg.n_embd // cfg.n_head) % 2:
            raise UserError(f"model.n_embd = {cfg.n_embd} must split into model.n_head = {cfg.n_head} heads of an "
                            "even width", "pick n_embd divisible by 2 * n_head")
        if cfg.norm not in ("layer", "rms") or cfg.activation not in ("gelu", "swiglu"):
            raise UserError(f"a GPT takes model.norm in ('layer', 'rms') and model.activation in ('gelu', 'swiglu'); "
                            f"got norm = '{cfg.norm}', activation = '{cfg.activation}'", "set them in the recipe")
        if cfg.moe_experts and cfg.moe_top_k > cfg.moe_experts:
            raise UserError(f"model.moe_top_k = {cfg.moe_top_k} exceeds model.moe_experts = {cfg.moe_experts}",
                            "route to at most as many experts as there are")
        return GPT(GPTConfig(vocab_size=info["vocab_size"], block_size=info["block_size"], n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, norm=cfg.norm,
                             pos=cfg.pos, mlp=cfg.activation, mlp_ratio=cfg.mlp_ratio, tie_weights=cfg.tie_weights,
                             moe_experts=cfg.moe_experts, moe_top_k=cfg.moe_top_k))
    if cfg.kind in CLASSICAL_KINDS:
        raise UserError(f"model.kind = '{cfg.kind}' is fitted by scikit-learn, not built as a network",
                        "train it with `trainlab train`, which fits it directly")
    out = info["num_classes"] if info["task"] == "classification" else 1
    if cfg.kind == "mlp":
        from trainlab.models.mlp import MLP

        return MLP(math.prod(shape), out, cfg.hidden, cfg.dropout, cfg.norm, cfg.activation)
    if cfg.kind == "cnn":
        if len(shape) != 3:
            raise UserError(f"model.kind = 'cnn' needs images (C, H, W); this data has inputs of shape {shape}",
                            "use model.kind = 'mlp' for tabular data")
        from trainlab.models.cnn import CNN

        return CNN(shape[0], out, cfg.channels, cfg.blocks, cfg.dropout, cfg.norm)
    raise ValueError(cfg.kind)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def load(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, info) from a run's model/ folder; a classical model comes back as its
    trainlab.models.classical wrapper."""
    from safetensors.torch import load_model

    d = Path(model_dir)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(f"{d} holds no trained model (model.safetensors + config.json)",
                        "train first, or give the run folder of a finished `trainlab train`")
    meta = json.loads((d / "config.json").read_text())
    if meta["model"]["kind"] in CLASSICAL_KINDS:
        from trainlab.models import classical

        return classical.load(d), meta["info"]
    model = build(ModelConfig.model_validate(meta["model"]), meta["info"])
    try:
        load_model(model, str(d / "model.safetensors"))
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{d / 'model.safetensors'} cannot be loaded: {e}", "the file is damaged; retrain") from None
    return model.eval(), meta["info"]
