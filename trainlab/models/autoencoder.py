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

import torch
import torch.nn.functional as F
from torch import nn


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
