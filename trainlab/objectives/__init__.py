"""Objectives: one file per paradigm. Each turns a batch into (scalar loss, metrics dict)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from trainlab.config import ObjectiveConfig
from trainlab.errors import UserError


class Objective(Protocol):
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]: ...


class LossModule(nn.Module):
    """A model and its objective as one module whose forward is the loss: what DDP and FSDP wrap, so that every
    call the objective makes on the model (model(x), model.encode(x), ...) happens inside one wrapped forward."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return self.objective.loss(self.model, batch)


def build(cfg: ObjectiveConfig, info: dict, model_kind: str = "mlp") -> Objective:
    from trainlab.objectives import supervised, unsupervised

    if model_kind == "gpt" or info["task"] == "language_modeling":
        if model_kind != "gpt" or info["task"] != "language_modeling" or cfg.kind not in ("auto", "next_token"):
            raise UserError(f"model.kind = '{model_kind}' with objective.kind = '{cfg.kind}' does not fit data with "
                            f"task '{info['task']}'", "language models pair model.kind = 'gpt' with text sources "
                            "(stdlib, text, jsonl, hf_disk) and objective.kind = 'auto'")
        from trainlab.objectives.next_token import NextToken

        return NextToken(cfg.moe_aux_weight)

    if model_kind in ("autoencoder", "vae"):
        kind = {"autoencoder": "reconstruction", "vae": "elbo"}[model_kind] if cfg.kind == "auto" else cfg.kind
        if kind == "elbo" and model_kind != "vae":
            raise UserError("objective.kind = 'elbo' needs model.kind = 'vae'", "set objective.kind = 'auto'")
        if kind == "reconstruction":
            return unsupervised.Reconstruction()
        if kind == "elbo":
            return unsupervised.ELBO(cfg.kl_weight, cfg.kl_warmup_steps)
        raise UserError(f"objective.kind = '{cfg.kind}' does not fit model.kind = '{model_kind}'",
                        "set objective.kind = 'auto'")
    if info.get("anomaly_class", -1) >= 0:
        raise UserError("data.anomaly_class is for unsupervised models: a classifier never trained on that class "
                        "cannot name it", "use model.kind = 'autoencoder', 'vae' or 'kmeans'")
    kind = info["task"] if cfg.kind == "auto" else cfg.kind
    if kind != info["task"]:
        raise UserError(f"objective.kind = '{cfg.kind}' does not fit data with task '{info['task']}'",
                        f"set objective.kind = 'auto' or data.task = '{cfg.kind}'")
    if kind == "classification":
        return supervised.Classification(cfg.label_smoothing)
    if kind == "regression":
        return supervised.Regression()
    raise UserError(f"model.kind = '{model_kind}' needs labels, but the data is '{info['task']}'",
                    "use an unsupervised model (autoencoder, vae, kmeans, ...) or give a target column")
