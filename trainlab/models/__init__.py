"""Models are plain nn.Modules. `build` makes one from a recipe's [model] table and the data's info;
`load` rebuilds a trained one from a run's model/ folder (model.safetensors + config.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from trainlab.config import ModelConfig
from trainlab.errors import UserError


def build(cfg: ModelConfig, info: dict) -> nn.Module:
    shape = info["input_shape"]
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
    return sum(p.numel() for p in model.parameters())


def load(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, info) from a run's model/ folder."""
    from safetensors.torch import load_model

    d = Path(model_dir)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(f"{d} holds no trained model (model.safetensors + config.json)",
                        "train first, or give the run folder of a finished `trainlab train`")
    meta = json.loads((d / "config.json").read_text())
    model = build(ModelConfig.model_validate(meta["model"]), meta["info"])
    try:
        load_model(model, str(d / "model.safetensors"))
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{d / 'model.safetensors'} cannot be loaded: {e}", "the file is damaged; retrain") from None
    return model.eval(), meta["info"]
