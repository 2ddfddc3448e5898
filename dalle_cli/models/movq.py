"""MoVQ, the latent autoencoder of Kandinsky 2.2 (and 2.1).

Kandinsky's UNet denoises 4-channel latents at 1/8 of the image resolution; MoVQ (Zheng et al. 2022) turns them into
pixels and, for image-to-image, pixels into latents. It is a VQGAN (Esser et al. 2021): a convolutional encoder, a
1x1 `quant_conv` to the codebook width, a codebook, a 1x1 `post_quant_conv` back, and a convolutional decoder whose
norms are `SpatialNorm`s conditioned on the latents the decoder started from (`norm_type` "spatial"; "group" gives
the plain VQGAN with GroupNorms).

The Kandinsky pipelines never quantise: `decode` reads the latents as they are (diffusers'
`decode(latents, force_not_quantize=True)`), and `encode` returns the `quant_conv` output, unscaled. The codebook
`quantize.embedding` is still in every checkpoint, so the module holds it for the strict loader, and never reads it.

Loads from a diffusers `VQModel` folder; parameter names follow that class. See `movq_blocks.py` for the blocks.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import check_choice
from ..errors import ConfigError
from .embeddings import ACTIVATIONS
from .movq_blocks import (EPS, SPATIAL_NORM_GROUPS, DecoderBlock, EncoderBlock, GroupNorm, MidBlock, NormFactory,
                          SpatialNorm)

DOWN_BLOCKS = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_BLOCKS = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")


@dataclass(frozen=True)
class MoVQConfig:
    """A MoVQ's `config.json`: diffusers' `VQModel`, whose defaults these are (Kandinsky's config sets most keys)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)  # one per level, from the finest
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)  # one per level, from the coarsest
    block_out_channels: tuple[int, ...] = (64,)  # channels per level, from the finest
    layers_per_block: int = 1  # residual blocks per encoder level (the decoder has one more per level)
    act_fn: str = "silu"  # the residual blocks' nonlinearity (the encoder's and decoder's output always use SiLU)
    latent_channels: int = 3
    sample_size: int = 32  # unused: the training resolution
    num_vq_embeddings: int = 256  # codebook size
    norm_num_groups: int = 32  # GroupNorm groups (SpatialNorms always have 32)
    vq_embed_dim: int | None = None  # codebook width; None: latent_channels
    scaling_factor: float = 0.18215  # unused: the Kandinsky pipelines do not scale MoVQ latents
    norm_type: str = "group"  # the decoder's norms: "group" (VQGAN) or "spatial" (MoVQ)
    mid_block_add_attention: bool = True
    # Options dalle does not implement: each must keep the reference default.
    lookup_from_codebook: bool = False  # True: decode() would read codebook indices
    force_upcast: bool = False  # unused: a hint to pipelines to run the autoencoder in float32

    @property
    def embed_dim(self) -> int:
        """The codebook width: the channels of the latents `encode` returns and `decode` reads."""
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels


def _check_config(c: MoVQConfig) -> None:
    """Raise `ConfigError` for anything in `c` that this module does not build exactly as the reference does."""
    name = "MoVQ"
    check_choice(name, "norm_type", c.norm_type, ("group", "spatial"))
    for kind in c.down_block_types:
        check_choice(name, "down_block_types", kind, DOWN_BLOCKS)
    for kind in c.up_block_types:
        check_choice(name, "up_block_types", kind, UP_BLOCKS)
    check_choice(name, "act_fn", c.act_fn.lower(), tuple(ACTIVATIONS))
    check_choice(name, "lookup_from_codebook", c.lookup_from_codebook, (False,))
    if not isinstance(c.layers_per_block, int):
        raise ConfigError(f"{name}: layers_per_block must be one integer, not {c.layers_per_block!r}")
    if not len(c.down_block_types) == len(c.up_block_types) == len(c.block_out_channels):
        raise ConfigError(f"{name}: block_out_channels, down_block_types and up_block_types must have the same length")
    groups = (c.norm_num_groups,) + ((SPATIAL_NORM_GROUPS,) if c.norm_type == "spatial" else ())
    for g in groups:
        if any(width % g for width in c.block_out_channels):
            raise ConfigError(f"{name}: block_out_channels {c.block_out_channels} must be multiples of {g} "
                              "(the GroupNorm groups)")
    if c.norm_type == "spatial" and c.embed_dim != c.latent_channels:  # the SpatialNorms read the latents
        raise ConfigError(f"{name}: spatial norms need vq_embed_dim ({c.embed_dim}) equal to latent_channels "
                          f"({c.latent_channels})")


class Encoder(nn.Module):
    """Image to pre-quantisation features: conv_in, one `EncoderBlock` per level (all but the last halve the
    resolution), the bottleneck, then GroupNorm -> SiLU -> conv_out. All norms are plain GroupNorms.
    x [B, in_channels, H, W] -> [B, latent_channels, H / 2^(levels-1), W / 2^(levels-1)]."""

    def __init__(self, c: MoVQConfig):
        super().__init__()
        channels, levels, act = c.block_out_channels, len(c.block_out_channels), ACTIVATIONS[c.act_fn.lower()]
        norm: NormFactory = partial(GroupNorm, c.norm_num_groups, eps=EPS)
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(channels[max(i - 1, 0)], channels[i], c.layers_per_block, norm, act,
                         kind == "AttnDownEncoderBlock2D", i < levels - 1)
            for i, kind in enumerate(c.down_block_types))
        self.mid_block = MidBlock(channels[-1], norm, act, c.mid_block_add_attention)
        self.conv_norm_out = norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # [B, C0, H, W]
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x, None)  # [B, C_last, h, w]
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # [B, latent_channels, h, w]


class Decoder(nn.Module):
    """Latents to image: conv_in, the bottleneck, one `DecoderBlock` per level from the coarsest (all but the last
    double the resolution, each has layers_per_block + 1 residual blocks), then norm -> SiLU -> conv_out.
    With spatial norms every norm is a `SpatialNorm` reading zq; with group norms zq is ignored.
    z [B, latent_channels, h, w], zq [B, latent_channels, h, w] or None -> [B, out_channels, h 2^(levels-1), ...]."""

    def __init__(self, c: MoVQConfig):
        super().__init__()
        channels, levels, act = c.block_out_channels[::-1], len(c.block_out_channels), ACTIVATIONS[c.act_fn.lower()]
        if c.norm_type == "spatial":
            norm: NormFactory = partial(SpatialNorm, zq_channels=c.latent_channels)
        else:
            norm = partial(GroupNorm, c.norm_num_groups, eps=EPS)
        self.conv_in = nn.Conv2d(c.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], norm, act, c.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(channels[max(i - 1, 0)], channels[i], c.layers_per_block + 1, norm, act,
                         kind == "AttnUpDecoderBlock2D", i < levels - 1)
            for i, kind in enumerate(c.up_block_types))
        self.conv_norm_out = norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        x = self.conv_in(z)  # [B, C_last, h, w]
        x = self.mid_block(x, zq)
        for block in self.up_blocks:
            x = block(x, zq)  # [B, C_i, ...], twice the size after each level but the last
        return self.conv_out(F.silu(self.conv_norm_out(x, zq)))  # [B, out_channels, H, W]


class Codebook(nn.Module):
    """The vector-quantiser's codebook, `embedding.weight` [num_vq_embeddings, embed_dim]. Held for the checkpoint
    only: dalle decodes without quantising, as the Kandinsky pipelines do."""

    def __init__(self, num_embeddings: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embed_dim)


class MoVQ(nn.Module):
    """The autoencoder: `encode` images to latents, `decode` latents to images (see the module docstring).

    Raises `ConfigError` for block types or options diffusers' `VQModel` has that dalle does not build
    (see `_check_config`).
    """

    def __init__(self, config: MoVQConfig):
        super().__init__()
        _check_config(config)
        self.config = c = config
        self.encoder = Encoder(c)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.embed_dim, 1)
        self.quantize = Codebook(c.num_vq_embeddings, c.embed_dim)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)
        self.decoder = Decoder(c)

    @property
    def downscale(self) -> int:
        """How many pixels one latent covers along each side: 2 ** (levels - 1), 8 for Kandinsky."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, in_channels, H, W] in [-1, 1] -> latents [B, embed_dim, H / downscale, W / downscale].

        The latents are the pre-quantisation `quant_conv` output with no scaling factor, which is what Kandinsky's
        image-to-image pipeline noises (diffusers' `encode(images).latents`). H and W should be multiples of
        `downscale`; other sizes are rounded down level by level, as diffusers does.
        """
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, embed_dim, h, w] -> images [B, out_channels, h * downscale, w * downscale], nominally in
        [-1, 1] but not clamped (diffusers' `decode(latents, force_not_quantize=True).sample`)."""
        z = self.post_quant_conv(latents)  # [B, latent_channels, h, w]
        return self.decoder(z, latents if self.config.norm_type == "spatial" else None)
