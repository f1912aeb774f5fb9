"""Unsupervised learning on the training loop: learn to compress and reconstruct unlabelled inputs.

Labels in the batch are never read here; evaluation uses them afterwards, where they exist, and says so.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable


class ReconstructionConfig(ObjectiveTable):
    kind: Literal["reconstruction"] = "reconstruction"


class ELBOConfig(ObjectiveTable):
    kind: Literal["elbo"] = "elbo"
    kl_weight: float = Field(1.0, ge=0)  # weight of the KL term (beta)
    kl_warmup_steps: int = Field(0, ge=0)  # the KL weight ramps linearly from 0 over these steps


@registry.objective("reconstruction", ReconstructionConfig, needs={"reconstruction"})
def build_reconstruction(cfg: ReconstructionConfig, info: dict):
    """Mean squared reconstruction error (autoencoders)."""
    return Reconstruction()


@registry.objective("elbo", ELBOConfig, needs={"latent_distribution"})
def build_elbo(cfg: ELBOConfig, info: dict):
    """Negative evidence lower bound with a KL warm-up (VAEs)."""
    return ELBO(cfg.kl_weight, cfg.kl_warmup_steps)


def per_example_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat.float() - x.float()).pow(2).flatten(1).mean(1)  # (B,)


class Reconstruction:
    """Autoencoder: mean squared reconstruction error."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x = batch["x"]
        loss = per_example_mse(model.decode(model.encode(x)[0]), x).mean()
        return loss, {"recon_mse": loss.detach()}


class ELBO:
    """VAE (Kingma & Welling, 2014): maximize the evidence lower bound

        ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))

    with the reparameterization z = mu + sigma * eps, eps ~ N(0, I), so gradients flow through the sample.
    p(x|z) = N(x_hat, s^2 I) with the model's learned s. The loss is -(E[log p(x|z)] - beta * KL), per
    example; beta ramps from 0 to kl_weight over kl_warmup_steps (Bowman et al., 2016) so the code is used
    before the KL term can switch it off. The logged `elbo` always uses beta = 1: it is the true bound (nats).
    """

    def __init__(self, kl_weight: float = 1.0, kl_warmup_steps: int = 0):
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps
        self.step = 0

    def before_step(self, step: int) -> None:
        """The loop's hook: the optimizer step about to be taken (the warm-up's clock; resumes exactly)."""
        self.step = step

    def beta(self) -> float:
        if not self.kl_warmup_steps:
            return self.kl_weight
        return self.kl_weight * min(1.0, self.step / self.kl_warmup_steps)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x = batch["x"].float()
        mu, logvar = model.encode(x)  # (B, latent) each
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x_hat = model.decode(z).float()
        d = x[0].numel()
        log_s = model.log_sigma
        # -log N(x | x_hat, s^2 I) = 0.5 * ||x - x_hat||^2 / s^2 + d * log s + d/2 * log(2 pi)
        sq = (x - x_hat).pow(2).flatten(1).sum(1)
        nll = 0.5 * sq * torch.exp(-2 * log_s) + d * log_s + 0.5 * d * math.log(2 * math.pi)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)  # closed form against N(0, I)
        loss = (nll + self.beta() * kl).mean()
        return loss, {"elbo": -(nll + kl).mean().detach(), "kl": kl.mean().detach(),
                      "recon_mse": (sq / d).mean().detach(), "beta": self.beta()}
