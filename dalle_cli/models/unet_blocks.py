"""The building blocks of the unCLIP UNets: residual blocks, text-conditioned attention, and the down/mid/up stages.

The decoder is GLIDE's text-conditional ADM UNet (Nichol et al. 2021, on Dhariwal & Nichol 2021), and the
super-resolution UNets are the same network without attention. Parameter names follow diffusers' `ResnetBlock2D`,
`Attention` (with `AttnAddedKVProcessor`), `ResnetDownsampleBlock2D`, `SimpleCrossAttnDownBlock2D`,
`UNetMidBlock2D`, `UNetMidBlock2DSimpleCrossAttn`, `ResnetUpsampleBlock2D` and `SimpleCrossAttnUpBlock2D`.
"""

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ResnetSettings:
    """What every residual block of a UNet shares."""

    temb_channels: int  # width of the timestep embedding each block projects
    groups: int  # GroupNorm groups
    eps: float  # GroupNorm epsilon
    act: Callable[[torch.Tensor], torch.Tensor]  # the nonlinearity after each GroupNorm
    scale_shift: bool  # AdaGN (ADM §3) instead of adding the projected embedding before the second norm
    output_scale: float = 1.0  # the block's output is (skip + residual) / output_scale


class ResnetBlock(nn.Module):
    """ADM's residual block (diffusers' `ResnetBlock2D`), optionally resampling like BigGAN (ADM §3).

    norm1 -> act -> [resample] -> conv1 -> time conditioning -> norm2 -> act -> conv2, plus the (resampled,
    1x1-projected when the width changes) input. Time conditioning adds the projected embedding before norm2, or with
    `scale_shift` is AdaGN: norm2(h) * (1 + s) + b with (s, b) projected from the embedding. `resample` "down" is a
    2x2 average pool and "up" a nearest-neighbour 2x upsampling, both applied to the input and the residual path.
    """

    def __init__(self, in_channels: int, out_channels: int, s: ResnetSettings,
                 resample: Literal["up", "down"] | None = None):
        super().__init__()
        self.act, self.scale_shift, self.output_scale, self.resample = s.act, s.scale_shift, s.output_scale, resample
        self.norm1 = nn.GroupNorm(s.groups, in_channels, eps=s.eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(s.temb_channels, (2 if s.scale_shift else 1) * out_channels)
        self.norm2 = nn.GroupNorm(s.groups, out_channels, eps=s.eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)  # [B, C, H/2, W/2]
        return F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W] and the activated time embedding temb [B, temb_channels] -> [B, out, H', W']."""
        h = self.act(self.norm1(x))
        if self.resample is not None:
            x, h = self._resample(x), self._resample(h)
        h = self.conv1(h)  # [B, out, H', W']
        t = self.time_emb_proj(temb)[:, :, None, None]  # [B, out or 2 out, 1, 1]
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.act(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale == 1.0 else out / self.output_scale


class TextImageAttention(nn.Module):
    """GLIDE's attention layer (diffusers' `Attention` with `AttnAddedKVProcessor`).

    The image tokens (the GroupNorm-ed feature map, one token per pixel) attend to themselves and to the text tokens,
    which GLIDE projects to the width of each attention layer and concatenates to its attention context. The keys and
    values are [text (add_k_proj/add_v_proj), image (to_k/to_v)]; the output projection is added back to the input
    feature map. The GroupNorm epsilon is the reference's fixed 1e-5, whatever the UNet's norm_eps.
    """

    def __init__(self, channels: int, head_dim: int, context_dim: int, groups: int):
        super().__init__()
        if channels % head_dim:  # the reference builds such a layer but cannot run it
            raise ConfigError(f"UNet: attention width {channels} is not a multiple of attention_head_dim {head_dim}")
        self.heads, self.head_dim = channels // head_dim, head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(context_dim, channels)
        self.add_v_proj = nn.Linear(context_dim, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # to_out.1 is the reference's (no-op) dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, H, W], context [B, S, context_dim], mask [B, 1, 1, S] (True: attend) or None -> [B, C, H, W]."""
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C], copied once for 3 linears
        q = self.to_q(tokens)  # [B, HW, C]
        k = torch.cat([self.add_k_proj(context), self.to_k(tokens)], dim=1)  # [B, S + HW, C]
        v = torch.cat([self.add_v_proj(context), self.to_v(tokens)], dim=1)  # [B, S + HW, C]
        q, k, v = (t.view(b, t.shape[1], self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, nh, L, d]
        if mask is not None:
            mask = F.pad(mask, (0, h * w), value=True)  # [B, 1, 1, S + HW]: image tokens are never masked
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, nh, HW, d]
        y = self.to_out[0](y.transpose(1, 2).reshape(b, h * w, c))  # [B, HW, C]
        return x + y.transpose(1, 2).reshape(b, c, h, w)


# Builds the attention layer of a stage for a given channel width (None: the stage has no attention).
AttentionFactory = Callable[[int], TextImageAttention] | None


def _attend(attentions: nn.ModuleList, i: int, x: torch.Tensor, context: torch.Tensor | None,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Apply the i-th attention layer of a stage, if the stage has attention."""
    return attentions[i](x, context, mask) if len(attentions) else x


class DownBlock(nn.Module):
    """One encoder level: `layers` residual blocks (each followed by attention when `attention` is given), then a
    downsampling residual block unless this is the last level (diffusers' `ResnetDownsampleBlock2D` /
    `SimpleCrossAttnDownBlock2D`). Returns the output and every intermediate state the decoder side reads as a skip.
    """

    def __init__(self, in_channels: int, out_channels: int, layers: int, s: ResnetSettings,
                 attention: AttentionFactory, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, s)
                                     for i in range(layers))
        self.attentions = nn.ModuleList(attention(out_channels) for _ in range(layers) if attention is not None)
        self.downsamplers = nn.ModuleList([ResnetBlock(out_channels, out_channels, s, "down")]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, in, H, W] -> ([B, out, H', W'], skips), H' = H / 2 when downsampling."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = _attend(self.attentions, i, resnet(x, temb), context, mask)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, temb)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """The bottleneck: residual block, attention (when given), residual block (diffusers' `UNetMidBlock2D` without
    attention / `UNetMidBlock2DSimpleCrossAttn`)."""

    def __init__(self, channels: int, s: ResnetSettings, attention: AttentionFactory):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, s), ResnetBlock(channels, channels, s)])
        self.attentions = nn.ModuleList([attention(channels)] if attention is not None else [])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H, W]."""
        x = _attend(self.attentions, 0, self.resnets[0](x, temb), context, mask)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """One decoder level: `layers` residual blocks, each reading the running features concatenated with one skip
    (popped from the end; the last one comes from the level above, with `skip_channels` channels), each followed by
    attention when `attention` is given; then an upsampling residual block unless this is the last level (diffusers'
    `ResnetUpsampleBlock2D` / `SimpleCrossAttnUpBlock2D`)."""

    def __init__(self, skip_channels: int, prev_channels: int, out_channels: int, layers: int, s: ResnetSettings,
                 attention: AttentionFactory, upsample: bool):
        super().__init__()
        running = [prev_channels] + [out_channels] * (layers - 1)
        skip = [out_channels] * (layers - 1) + [skip_channels]
        self.resnets = nn.ModuleList(ResnetBlock(r + k, out_channels, s) for r, k in zip(running, skip))
        self.attentions = nn.ModuleList(attention(out_channels) for _ in range(layers) if attention is not None)
        self.upsamplers = nn.ModuleList([ResnetBlock(out_channels, out_channels, s, "up")]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, prev, H, W] and len(self.resnets) skips -> [B, out, H', W'], H' = 2H when upsampling."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)  # [B, out, H, W]
            x = _attend(self.attentions, i, x, context, mask)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, temb)
        return x
