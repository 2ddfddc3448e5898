"""The unCLIP decoder and super-resolution UNets.

Ramesh et al. 2022 (unCLIP, §2.1): the decoder is GLIDE's 64 px text-conditional diffusion UNet (Nichol et al. 2021,
built on the ADM UNet of Dhariwal & Nichol 2021). CLIP embeddings are projected and added to its timestep embedding
(`class_labels` here) and projected into extra context tokens placed before the text tokens
(`encoder_hidden_states`). It predicts the noise and, with learned variance, the interpolation weights of the
variance (hence twice the image channels out). The upsamplers (§2.1, App. C) are ADM UNets with spatial convolutions
only, no attention, that read the noisy high-resolution image concatenated with the upscaled low-resolution one.

Both configurations load from diffusers checkpoints: the decoder is a `UNet2DConditionModel` with
ResnetDownsample/SimpleCrossAttn blocks, the upsamplers `UNet2DModel`s with Resnet(Down|Up)sample blocks. Parameter
names follow those classes. See `unet_blocks.py` for the blocks.

Kandinsky 2.2's decoder (kandinsky-community/kandinsky-2-2-decoder) is the same `UNet2DConditionModel` denoising
4-channel MoVQ latents, conditioned on the CLIP image embedding only (`addition_embed_type` "image" and
`encoder_hid_dim_type` "image_proj", see `image_conditioning.py`): no text tokens, no class labels, no mask.
The copy of its config in tests/data/reference lacks `up_block_types` and `sample_size`. The tests assume
["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"] and 64, the mirror of its down blocks as in Karlo's
decoder, whose layout it shares, and as in the Kandinsky 2.1 conversion config (NOTES.md there). dalle itself assumes
nothing: it builds what a config says, and a real config with other up blocks builds those or raises `ConfigError`
(a missing `up_block_types` means diffusers' default CrossAttn blocks, which dalle rejects).
"""

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from ..configs import check_choice
from ..errors import ConfigError, UsageError
from .embeddings import ACTIVATIONS, TimestepEmbedding, timestep_batch, timestep_embedding
from .image_conditioning import ImageContextTokens, ImageTimeEmbedding
from .unet_blocks import AttentionFactory, DownBlock, MidBlock, ResnetSettings, TextImageAttention, UpBlock

# The defaults that differ between diffusers' two UNet classes, as (UNet2DConditionModel, UNet2DModel).
CLASS_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "in_channels": (4, 3),
    "out_channels": (4, 3),
    "down_block_types": (("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), ("DownBlock2D",) + ("AttnDownBlock2D",) * 3),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"),
    "up_block_types": (("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, ("AttnUpBlock2D",) * 3 + ("UpBlock2D",)),
    "block_out_channels": ((320, 640, 1280, 1280), (224, 448, 672, 896)),
}
ATTENTION_BLOCKS = ("SimpleCrossAttnDownBlock2D", "UNetMidBlock2DSimpleCrossAttn", "SimpleCrossAttnUpBlock2D")
# The (down, mid, up) block types dalle builds, for text-conditional UNets and for the others.
SUPPORTED_BLOCKS = {
    True: (("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"), ("UNetMidBlock2DSimpleCrossAttn",),
           ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D")),
    False: (("ResnetDownsampleBlock2D",), ("UNetMidBlock2D",), ("ResnetUpsampleBlock2D",)),
}


@dataclass(frozen=True)
class UNetConfig:
    """A UNet's `config.json`: diffusers' `UNet2DConditionModel` (the decoder) or `UNet2DModel` (the upsamplers).

    Only `UNet2DConditionModel` configs have the `cross_attention_dim` key, so it tells the two apart. Where the two
    classes' defaults differ (`CLASS_DEFAULTS`), the field defaults to None and resolves to the default of the class
    the config describes. `layers_per_block`, `attention_head_dim` and `cross_attention_dim` are one value for every
    level or one per level. Keys not declared here are ignored (`configs.from_config`): they select options dalle's
    block types do not have (e.g. `dual_cross_attention`, `upcast_attention` only concern CrossAttn blocks) or are
    only read with an option `_check_config` rejects (`addition_embed_type_num_heads` only with "text").
    """

    sample_size: int | None = None  # the resolution the network was trained at
    in_channels: int | None = None
    out_channels: int | None = None  # twice the image channels for a learned-variance decoder
    center_input_sample: bool = False  # map inputs from [0, 1] to [-1, 1] first
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] | None = None
    mid_block_type: str | None = None
    up_block_types: tuple[str, ...] | None = None
    block_out_channels: tuple[int, ...] | None = None  # channels per level, from the finest
    layers_per_block: int | tuple[int, ...] = 2  # residual blocks per down level (one more per up level)
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] | None = None  # context token width; None: a UNet2DModel
    attention_head_dim: int | tuple[int, ...] = 8  # the width of one head (heads = channels // head dim)
    class_embed_type: str | None = None  # "identity": `class_labels` are added to the time embedding
    resnet_time_scale_shift: str = "default"  # or "scale_shift" (AdaGN)
    resnet_skip_time_act: bool = False  # feed the time embedding to the residual blocks without the nonlinearity
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None  # None: 4 * block_out_channels[0]
    time_embedding_act_fn: str | None = None  # a nonlinearity on the summed time embedding
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    add_attention: bool = True  # UNet2DModel: attention in the bottleneck
    # Image conditioning (Kandinsky 2.2): the width of `image_embeds`, and what is made of them.
    encoder_hid_dim: int | None = None
    addition_embed_type: str | None = None  # "image": LayerNorm(Linear(image_embeds)) joins the time embedding
    encoder_hid_dim_type: str | None = None  # "image_proj": the context tokens are made from image_embeds
    # Options dalle does not implement: each must keep the reference default.
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    num_class_embeds: int | None = None
    class_embeddings_concat: bool = False
    only_cross_attention: bool | tuple[bool, ...] = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None

    def __post_init__(self) -> None:
        for key, defaults in CLASS_DEFAULTS.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, defaults[0 if self.conditional else 1])

    @property
    def conditional(self) -> bool:
        """True for a `UNet2DConditionModel` (text- or image-conditional), False for a `UNet2DModel`."""
        return self.cross_attention_dim is not None

    @property
    def image_conditional(self) -> bool:
        """True when the forward needs `image_embeds` (Kandinsky 2.2's decoder)."""
        return self.addition_embed_type is not None or self.encoder_hid_dim_type is not None

    @property
    def context_from_image(self) -> bool:
        """True when the attention context is made from `image_embeds`, not passed as `encoder_hidden_states`."""
        return self.encoder_hid_dim_type == "image_proj"


def _per_level(value: Any, levels: int) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,) * levels


def _check_config(c: UNetConfig, name: str) -> None:
    """Raise `ConfigError` for anything in `c` that this module does not build exactly as the reference does."""
    levels = len(c.block_out_channels)
    down, mid, up = SUPPORTED_BLOCKS[c.conditional]
    if not c.conditional:  # UNet2DModel's bottleneck attention (UNet2DConditionModel has no such option)
        check_choice(name, "add_attention", c.add_attention, (False,))
    for kind in c.down_block_types:
        check_choice(name, "down_block_types", kind, down)
    check_choice(name, "mid_block_type", c.mid_block_type, mid)
    for kind in c.up_block_types:
        check_choice(name, "up_block_types", kind, up)
    check_choice(name, "time_embedding_type", c.time_embedding_type, ("positional",))
    check_choice(name, "class_embed_type", c.class_embed_type, (None, "identity"))
    check_choice(name, "resnet_time_scale_shift", c.resnet_time_scale_shift, ("default", "scale_shift"))
    for key in ("act_fn", "time_embedding_act_fn"):
        if getattr(c, key) is not None:
            check_choice(name, key, getattr(c, key).lower(), tuple(ACTIVATIONS))
    for key in ("timestep_post_act", "time_cond_proj_dim", "num_class_embeds", "cross_attention_norm"):
        check_choice(name, key, getattr(c, key), (None,))
    check_choice(name, "class_embeddings_concat", c.class_embeddings_concat, (False,))
    for value in _per_level(c.only_cross_attention, levels):
        check_choice(name, "only_cross_attention", value, (False,))
    check_choice(name, "mid_block_only_cross_attention", c.mid_block_only_cross_attention, (None, False))
    _check_image_conditioning(c, name)
    if not len(c.down_block_types) == len(c.up_block_types) == levels:
        raise ConfigError(f"{name}: block_out_channels, down_block_types and up_block_types must have the same length")
    for key in ("layers_per_block", "attention_head_dim", "cross_attention_dim"):
        if len(_per_level(getattr(c, key), levels)) != levels:
            raise ConfigError(f"{name}: {key} must give one value per level ({levels})")
    if any(width % c.norm_num_groups for width in c.block_out_channels):
        raise ConfigError(f"{name}: block_out_channels {c.block_out_channels} must be multiples of norm_num_groups "
                          f"{c.norm_num_groups}")


def _check_image_conditioning(c: UNetConfig, name: str) -> None:
    """The image-embedding options: only Kandinsky 2.2's "image" / "image_proj", each optional, on a decoder."""
    # diffusers reads an `encoder_hid_dim` without a type as "text_proj" (a Linear on encoder_hidden_states).
    hid_type = c.encoder_hid_dim_type or ("text_proj" if c.encoder_hid_dim is not None else None)
    supported = (None, "image_proj") if c.conditional else (None,)
    check_choice(name, "encoder_hid_dim_type", hid_type, supported)
    check_choice(name, "addition_embed_type", c.addition_embed_type, (None, "image") if c.conditional else (None,))
    if c.image_conditional and c.encoder_hid_dim is None:
        raise ConfigError(f"{name}: addition_embed_type {c.addition_embed_type!r} and encoder_hid_dim_type "
                          f"{c.encoder_hid_dim_type!r} need encoder_hid_dim, the width of the image embeddings")
    if c.context_from_image and not isinstance(c.cross_attention_dim, int):
        raise ConfigError(f"{name}: encoder_hid_dim_type 'image_proj' needs one cross_attention_dim for all levels, "
                          f"not {c.cross_attention_dim}")


def _check_inputs(c: UNetConfig, **inputs: torch.Tensor | None) -> None:
    """Raise `UsageError` unless exactly the conditioning inputs that config `c` reads are given."""
    needed = {
        "encoder_hidden_states": c.conditional and not c.context_from_image,
        "class_labels": c.class_embed_type == "identity",
        "image_embeds": c.image_conditional,
    }
    for key, value in inputs.items():
        if needed[key] != (value is not None):
            raise UsageError(f"{key} {'are required' if needed[key] else 'are not used'} here")


class UNet(nn.Module):
    """The diffusion UNet: conv_in, `len(block_out_channels)` down levels, the bottleneck, as many up levels reading
    the down levels' states as skips, then GroupNorm -> nonlinearity -> conv_out.

    Raises `ConfigError` for block types or options outside the Karlo and Kandinsky 2.2 families (see
    `_check_config`).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        name = "decoder UNet" if c.conditional else "super-resolution UNet"
        _check_config(c, name)
        channels, levels = c.block_out_channels, len(c.block_out_channels)
        layers, head_dims, context_dims = (_per_level(getattr(c, key), levels)
                                           for key in ("layers_per_block", "attention_head_dim", "cross_attention_dim"))
        time_dim = c.time_embedding_dim or 4 * channels[0]
        # UNet2DModel hard-wires SiLU for its time MLP and its output; UNet2DConditionModel uses act_fn throughout.
        outer_act = c.act_fn.lower() if c.conditional else "silu"
        self.act = ACTIVATIONS[c.act_fn.lower()]
        self.out_act = ACTIVATIONS[outer_act]
        self.time_embed_act = ACTIVATIONS[c.time_embedding_act_fn.lower()] if c.time_embedding_act_fn else None

        self.conv_in = nn.Conv2d(c.in_channels, channels[0], c.conv_in_kernel, padding=(c.conv_in_kernel - 1) // 2)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, outer_act)
        if c.context_from_image:
            self.encoder_hid_proj = ImageContextTokens(c.encoder_hid_dim, c.cross_attention_dim)
        if c.addition_embed_type == "image":
            self.add_embedding = ImageTimeEmbedding(c.encoder_hid_dim, time_dim)
        res = ResnetSettings(time_dim, c.norm_num_groups, c.norm_eps, self.act,
                             c.resnet_time_scale_shift == "scale_shift", c.resnet_out_scale_factor)

        def attention(kind: str, head_dim: int, context_dim: int) -> AttentionFactory:
            if kind not in ATTENTION_BLOCKS:
                return None
            return partial(TextImageAttention, head_dim=head_dim, context_dim=context_dim, groups=c.norm_num_groups)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(c.down_block_types):
            self.down_blocks.append(DownBlock(channels[max(i - 1, 0)], channels[i], layers[i], res,
                                              attention(kind, head_dims[i], context_dims[i]), i < levels - 1))
        self.mid_block = MidBlock(channels[-1], replace(res, output_scale=c.mid_block_scale_factor),
                                  attention(c.mid_block_type, head_dims[-1], context_dims[-1]))
        self.up_blocks = nn.ModuleList()
        up_channels, up_layers, up_context_dims = channels[::-1], layers[::-1], context_dims[::-1]
        for i, kind in enumerate(c.up_block_types):
            # As in the reference, up level i takes the i-th attention_head_dim, not the reversed one.
            self.up_blocks.append(UpBlock(up_channels[min(i + 1, levels - 1)], up_channels[max(i - 1, 0)],
                                          up_channels[i], up_layers[i] + 1, res,
                                          attention(kind, head_dims[i], up_context_dims[i]), i < levels - 1))
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], c.out_channels, c.conv_out_kernel, padding=(c.conv_out_kernel - 1) // 2)

    def _time_embedding(self, sample: torch.Tensor, timestep: int | torch.Tensor, class_labels: torch.Tensor | None,
                        image_embeds: torch.Tensor | None) -> torch.Tensor:
        """The activated time embedding the residual blocks read: [B, time_dim]. The additive terms are summed in the
        reference's order (timestep, class labels, image), which fixes the rounding."""
        c = self.config
        t = timestep_batch(timestep, sample.shape[0], sample.device)  # [B]
        emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)  # [B, C0] float32
        emb = self.time_embedding(emb.to(sample.dtype))  # [B, time_dim]
        if class_labels is not None:
            emb = emb + class_labels.to(sample.dtype)
        if c.addition_embed_type == "image":
            emb = emb + self.add_embedding(image_embeds)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb if c.resnet_skip_time_act else self.act(emb)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the network output (noise, plus variance weights with learned variance) for a noisy sample.

        sample [B, in_channels, H, W] with H and W multiples of 2 ** (levels - 1); timestep an int, or a tensor of
        one or B timesteps. The decoder also takes the context tokens encoder_hidden_states [B, S, cross_attention_dim]
        with attention_mask [B, S] (True or 1: attend; None: attend to all), and with class_embed_type "identity" the
        additive embedding class_labels [B, time_dim]. Kandinsky 2.2's decoder takes the image embeddings
        image_embeds [B, encoder_hid_dim] instead of encoder_hidden_states (diffusers' `added_cond_kwargs=
        {"image_embeds": ...}`): its context is the `IMAGE_TOKENS` tokens projected from them, which attention_mask
        (rarely wanted) would then mask. Returns [B, out_channels, H, W]. Raises `UsageError` for a sample size the
        levels cannot halve, or conditioning the config does not call for.
        """
        c = self.config
        factor = 2 ** (len(c.block_out_channels) - 1)
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise UsageError(f"UNet input {tuple(sample.shape[-2:])} is not a multiple of {factor} pixels")
        _check_inputs(c, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels,
                      image_embeds=image_embeds)
        if c.center_input_sample:
            sample = 2 * sample - 1.0
        if image_embeds is not None:
            image_embeds = image_embeds.to(sample.dtype)
        temb = self._time_embedding(sample, timestep, class_labels, image_embeds)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        context = self.encoder_hid_proj(image_embeds) if c.context_from_image else encoder_hidden_states

        # The input follows the weights' layout (channels-last on the CPU, `devices.conv_layout`); so do the states.
        weight = self.conv_in.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        x = self.conv_in(sample.contiguous(memory_format=layout))  # [B, C0, H, W]
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x, temb, context, mask)
            skips += states
        x = self.mid_block(x, temb, context, mask)  # [B, C_last, H / factor, W / factor]
        for block in self.up_blocks:
            n = len(block.resnets)
            x = block(x, skips[-n:], temb, context, mask)
            del skips[-n:]
        return self.conv_out(self.out_act(self.conv_norm_out(x))).contiguous()  # [B, out_channels, H, W]

