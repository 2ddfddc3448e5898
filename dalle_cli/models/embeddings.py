"""Diffusion timestep embeddings shared by the prior and the UNets.

A timestep t is first mapped to a fixed sinusoidal feature vector (`timestep_embedding`, the Transformer positional
encoding of Vaswani et al. 2017 as used by DDPM, Ho et al. 2020), then through a learned two-layer MLP
(`TimestepEmbedding`). Parameter names follow diffusers' `TimestepEmbedding` (`linear_1`, `linear_2`).
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import check_choice

# The activation names diffusers accepts for its timestep MLP (case-insensitive), mapped to parameter-free functions.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "gelu": F.gelu,
    "relu": F.relu,
}


def timestep_batch(timestep: int | float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A network's timestep argument as one per sample: an int, a float or a tensor of shape [] or [B] -> [B].
    A Python number is filled in rather than converted (`torch.as_tensor`), so that torch.compile traces it as an
    input and compiles once for every timestep, not once per timestep."""
    if isinstance(timestep, torch.Tensor):
        return timestep.to(device).reshape(-1).expand(batch)
    return torch.full((batch,), timestep, device=device)


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool,
    downscale_freq_shift: float,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal features of a 1-D tensor of (possibly fractional) timesteps: [B] -> [B, dim], always float32.

    With half = dim // 2 frequencies f_i = max_period ** (-i / (half - downscale_freq_shift)), i = 0..half-1, the
    features are [sin(t f), cos(t f)], or [cos(t f), sin(t f)] when `flip_sin_to_cos`; an odd `dim` gets one zero
    column at the end. Matches diffusers' `get_timestep_embedding` bit for bit.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * -math.log(max_period)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))  # [half]
    args = timesteps[:, None].float() * freqs[None, :]  # [B, half]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # [B, 2 * half]
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))  # [B, dim]
    return emb


class TimestepEmbedding(nn.Module):
    """The learned MLP on top of the sinusoidal features: linear_1 -> activation -> linear_2.

    Maps [..., in_channels] to [..., out_dim] (out_dim defaults to `time_embed_dim`, the hidden width). Raises
    `ConfigError` for an activation name diffusers would not accept either.
    """

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None):
        super().__init__()
        check_choice("timestep embedding", "act_fn", act_fn.lower(), tuple(ACTIVATIONS))
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = ACTIVATIONS[act_fn.lower()]
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))
