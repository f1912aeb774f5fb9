"""Autoencoders and variational autoencoders, fully connected or convolutional.

    z = encode(x)        the code: (B, latent) for an autoencoder; (mu, logvar) for a VAE
    x_hat = decode(z)    back to the input's shape
    forward(x)           decode(mean code): the reconstruction, deterministic

The VAE's decoder is a Gaussian N(x_hat, sigma^2 I) with one learned sigma (a "calibrated decoder", Rybkin et
al., 2021): the balance between reconstruction and KL is learned instead of hand-tuned, and the ELBO stays a
true bound on log p(x).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable
from trainlab.errors import UserError


class AutoEncoderConfig(NetworkTable):
    kind: Literal["autoencoder"] = "autoencoder"
    arch: Literal["mlp", "conv"] = "mlp"  # fully connected, or convolutional (images only)
    hidden: list[PositiveInt] = [256, 128]  # arch mlp: hidden widths of the encoder (the decoder mirrors them)
    channels: list[PositiveInt] = [32, 64]  # arch conv: width of each stride-2 stage
    latent_dim: PositiveInt = 8  # size of the code
    activation: Literal["relu", "gelu"] = "relu"
    n_clusters: int = Field(10, ge=2)  # evaluation: k-means with this k on the codes

    @model_validator(mode="after")
    def _arch_keys(self):
        # A written-out config.toml sets every key: only a value the other arch would need is a mistake.
        unused = {"mlp": "channels", "conv": "hidden"}[self.arch]
        if getattr(self, unused) != type(self).model_fields[unused].default:
            raise ValueError(f"model.{unused} is not used by model.arch = '{self.arch}'; remove it "
                             f"(the {self.arch} arch reads model.{'hidden' if self.arch == 'mlp' else 'channels'})")
        return self


class VAEConfig(AutoEncoderConfig):
    kind: Literal["vae"] = "vae"


def _build(cfg: AutoEncoderConfig, info: dict) -> nn.Module:
    shape = info["input_shape"]
    if cfg.arch == "conv" and len(shape) != 3:
        raise UserError(f"model.arch = 'conv' needs images (C, H, W); this data has inputs of shape {shape}",
                        "use model.arch = 'mlp' for tabular data")
    return AutoEncoder(shape, cfg.latent_dim, cfg.arch, cfg.hidden, cfg.channels, cfg.kind == "vae", cfg.activation)


@registry.model("autoencoder", AutoEncoderConfig, consumes={"features"}, produces={"codes", "reconstruction"},
                objective="reconstruction")
def build_autoencoder(cfg: AutoEncoderConfig, info: dict) -> nn.Module:
    """Autoencoder (MLP or conv): a code of latent_dim numbers and its reconstruction."""
    return _build(cfg, info)


@registry.model("vae", VAEConfig, consumes={"features"},
                produces={"codes", "reconstruction", "latent_distribution"}, objective="elbo")
def build_vae(cfg: VAEConfig, info: dict) -> nn.Module:
    """Variational autoencoder: a Gaussian latent, a decoder with a learned noise scale."""
    return _build(cfg, info)


def _act(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.GELU()


class AutoEncoder(nn.Module):
    def __init__(self, input_shape: list[int], latent_dim: int, arch: str = "mlp", hidden: list[int] = (256,),
                 channels: list[int] = (32, 64), variational: bool = False, activation: str = "relu"):
        super().__init__()
        self.input_shape, self.latent_dim, self.variational = list(input_shape), latent_dim, variational
        code_out = latent_dim * (2 if variational else 1)  # a VAE's encoder emits mean and log-variance
        if arch == "conv" and len(input_shape) != 3:
            raise ValueError("a convolutional autoencoder needs image inputs (C, H, W)")
        if arch == "mlp":
            d = math.prod(input_shape)
            enc: list[nn.Module] = [nn.Flatten()]
            width = d
            for h in hidden:
                enc += [nn.Linear(width, h), _act(activation)]
                width = h
            self.encoder = nn.Sequential(*enc, nn.Linear(width, code_out))
            dec: list[nn.Module] = []
            width = latent_dim
            for h in reversed(hidden):
                dec += [nn.Linear(width, h), _act(activation)]
                width = h
            self.decoder = nn.Sequential(*dec, nn.Linear(width, d), nn.Unflatten(1, tuple(input_shape)))
        else:
            c, h, w = input_shape
            enc, c_prev = [], c
            for ch in channels:  # each stage halves the resolution: 8x8 -> 4x4 -> 2x2
                enc += [nn.Conv2d(c_prev, ch, 3, stride=2, padding=1), _act(activation)]
                c_prev = ch
            body = nn.Sequential(*enc)
            with torch.no_grad():
                self._grid = tuple(body(torch.zeros(1, c, h, w)).shape[1:])  # (C', H', W')
            self.encoder = nn.Sequential(body, nn.Flatten(), nn.Linear(math.prod(self._grid), code_out))
            dec = [nn.Linear(latent_dim, math.prod(self._grid)), _act(activation), nn.Unflatten(1, self._grid)]
            outs = list(reversed(channels))[1:] + [channels[0]]
            for ch_in, ch_out in zip(reversed(channels), outs):
                dec += [nn.ConvTranspose2d(ch_in, ch_out, 4, stride=2, padding=1), _act(activation)]
            dec.append(nn.Conv2d(channels[0], c, 3, padding=1))
            self.decoder = nn.Sequential(*dec)
        if variational:
            self.log_sigma = nn.Parameter(torch.zeros(()))  # the decoder's learned noise scale

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.encoder(x)
        if self.variational:
            mu, logvar = out.chunk(2, dim=-1)
            return mu, logvar.clamp(-12.0, 12.0)  # keeps exp(logvar) finite early in training
        return out, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = self.decoder(z)
        if x_hat.shape[1:] != tuple(self.input_shape):  # sizes not divisible by 2**stages
            x_hat = F.interpolate(x_hat, size=tuple(self.input_shape[1:]), mode="bilinear", align_corners=False)
        return x_hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
