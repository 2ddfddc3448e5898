"""The building blocks of MoVQ (Kandinsky 2.2's latent autoencoder): norms, residual blocks, attention, resampling
and the encoder/decoder levels.

MoVQ (Zheng et al. 2022, "MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation") is the VQGAN
autoencoder of Esser et al. 2021 whose decoder normalises every feature map f with `SpatialNorm`, a GroupNorm
modulated per pixel by the latents zq the decoder started from. With `GroupNorm` instead, the same blocks build the
plain VQGAN. Every block calls its norms as `norm(x, zq)`, so one set of blocks serves the encoder (plain norms, zq
None) and both decoders.

These are not the UNet's blocks (`unet_blocks.py`): there is no timestep embedding, the attention is single-head
self-attention over the pixels, and the resampling layers are convolutions. Parameter names follow diffusers'
`ResnetBlock2D` / `ResnetBlockCondNorm2D`, `Attention` (as built for the autoencoders), `SpatialNorm`,
`Downsample2D`, `Upsample2D`, `DownEncoderBlock2D` / `AttnDownEncoderBlock2D`, `UNetMidBlock2D` and
`UpDecoderBlock2D` / `AttnUpDecoderBlock2D`.
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor]
# Builds the norm of a block for a given channel width: `GroupNorm` or `SpatialNorm`, both called as norm(x, zq).
NormFactory = Callable[[int], nn.Module]

EPS = 1e-6  # the epsilon of every norm in the autoencoder
SPATIAL_NORM_GROUPS = 32  # SpatialNorm's GroupNorm always has 32 groups, whatever the config's norm_num_groups


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` that accepts the decoder's conditioning and ignores it: x [B, C, H, W], zq -> [B, C, H, W]."""

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class SpatialNorm(nn.Module):
    """MoVQ's spatially conditioned normalisation: GroupNorm(f) * conv_y(zq') + conv_b(zq'), where zq' is zq
    nearest-neighbour resized to f's height and width and conv_y, conv_b are 1x1 convolutions.

    f [B, C, H, W], zq [B, zq_channels, h, w] -> [B, C, H, W].
    """

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(SPATIAL_NORM_GROUPS, channels, eps=EPS)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")  # [B, zq_channels, H, W]
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class ResnetBlock(nn.Module):
    """The autoencoder's residual block: norm1 -> act -> conv1 -> norm2 -> act -> conv2, plus the input (1x1-projected
    by `conv_shortcut` when the width changes). x [B, in, H, W], zq (for spatial norms) -> [B, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, act: Activation):
        super().__init__()
        self.act = act
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x, zq)))  # [B, out, H, W]
        h = self.conv2(self.act(self.norm2(h, zq)))  # [B, out, H, W]
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of the normalised feature map, added back to the input.

    Each pixel is one token of width C (one head of width C, softmax scale 1/sqrt(C)). The norm is stored as
    `group_norm` or, for a `SpatialNorm`, as `spatial_norm`, the names the checkpoints use.
    x [B, C, H, W], zq (for a spatial norm) -> [B, C, H, W].
    """

    def __init__(self, channels: int, norm: NormFactory):
        super().__init__()
        built = norm(channels)
        self.spatial_norm = built if isinstance(built, SpatialNorm) else None
        self.group_norm = None if self.spatial_norm is not None else built
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # to_out.1 is the reference's (no-op) dropout

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.spatial_norm is not None:
            normed = self.spatial_norm(x, zq).flatten(2)  # [B, C, HW]
        else:  # normalised as [B, C, HW], like the reference: GroupNorm's kernel for 4-D channels-last input differs
            normed = self.group_norm(x.flatten(2))  # [B, C, HW]
        tokens = normed.transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, HW, C]
        y = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, HW, C]
        y = self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)  # [B, C, H, W], a channels-last view
        # y first: the sum then keeps y's channels-last layout, and so does everything after it, as in diffusers.
        # Convolutions pick their kernels by layout, so the order keeps the results bit for bit the reference's.
        return y + x


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution after padding one zero row and column at the bottom and
    right (the VQGAN's asymmetric padding). [B, C, H, W] -> [B, C, floor(H / 2), floor(W / 2)]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution. [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):
    """One encoder level: `layers` residual blocks (each followed by attention when `attention`), then a `Downsample`
    unless this is the last level (diffusers' `DownEncoderBlock2D` / `AttnDownEncoderBlock2D`).
    x [B, in, H, W] -> [B, out, H', W'], H' = floor(H / 2) when downsampling."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, norm: NormFactory, act: Activation,
                 attention: bool, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm, act)
                                     for i in range(layers))
        self.attentions = nn.ModuleList(Attention(out_channels, norm) for _ in range(layers) if attention)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, None)
            if len(self.attentions):
                x = self.attentions[i](x, None)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """The bottleneck: residual block, attention (when `attention`), residual block (diffusers' `UNetMidBlock2D`
    without a timestep embedding). x [B, C, H, W], zq (for spatial norms) -> [B, C, H, W]."""

    def __init__(self, channels: int, norm: NormFactory, act: Activation, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, norm, act),
                                      ResnetBlock(channels, channels, norm, act)])
        self.attentions = nn.ModuleList([Attention(channels, norm)] if attention else [])

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        x = self.resnets[0](x, zq)
        if len(self.attentions):
            x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


class DecoderBlock(nn.Module):
    """One decoder level: `layers` residual blocks (each followed by attention when `attention`), then an `Upsample`
    unless this is the last level (diffusers' `UpDecoderBlock2D` / `AttnUpDecoderBlock2D`). Unlike the UNet's, it
    reads no skip connections. x [B, in, H, W], zq (for spatial norms) -> [B, out, H', W'], H' = 2H when upsampling."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, norm: NormFactory, act: Activation,
                 attention: bool, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm, act)
                                     for i in range(layers))
        self.attentions = nn.ModuleList(Attention(out_channels, norm) for _ in range(layers) if attention)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if len(self.attentions):
                x = self.attentions[i](x, zq)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
