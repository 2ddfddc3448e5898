"""CLIP's vision tower with its projection (Radford et al. 2021, arXiv 2103.00020, §2.4): an image to its embedding in
the joint CLIP space, which unCLIP's decoder inverts (Ramesh et al. 2022, §2; image variations, §3.1).

A ViT (Dosovitskiy et al. 2020, arXiv 2010.11929, eq. 1-4): non-overlapping patches embedded by a strided convolution,
a learned class token in front, learned position embeddings; CLIP adds a layer norm before the transformer
(`pre_layrnorm`, sic) and normalizes the class token's output (`post_layernorm`) before the bias-free projection.
Parameter names equal transformers' `CLIPVisionModelWithProjection` state dict.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_weights
from ..configs import from_config, read_json
from ..errors import ConfigError
from .clip_layers import Encoder, tower_config


@dataclass
class CLIPVisionConfig:
    """transformers' `CLIPVisionConfig` fields that shape the network, with its defaults (ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


class VisionEmbeddings(nn.Module):
    """Pixels [B, C, S, S] -> tokens [B, 1 + (S/P)^2, D]: the class token, then the patches in row-major order,
    plus the position embeddings."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        D, P = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        self.class_embedding = nn.Parameter(torch.empty(D))
        self.patch_embedding = nn.Conv2d(config.num_channels, D, kernel_size=P, stride=P, bias=False)
        self.position_embedding = nn.Embedding((config.image_size // P) ** 2 + 1, D)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        if H != self.image_size or W != self.image_size:
            raise ConfigError(f"image_encoder: takes {self.image_size}x{self.image_size} pixels but was given {H}x{W}; "
                              "the preprocessor's crop_size must equal the encoder's image_size")
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, D, S/P, S/P]
        patches = patches.flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = torch.cat([self.class_embedding.expand(B, 1, -1), patches], dim=1)  # [B, 1 + N, D]
        return tokens + self.position_embedding.weight


class CLIPVisionEncoder(nn.Module):
    """Normalized pixels [B, 3, S, S] (see `dalle_cli.images.preprocess`) -> image_embeds [B, projection_dim]."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.vision_model = nn.ModuleDict(dict(
            embeddings=VisionEmbeddings(config),
            pre_layrnorm=nn.LayerNorm(D, eps=config.layer_norm_eps),
            encoder=Encoder(D, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers,
                            config.hidden_act, config.layer_norm_eps, "image_encoder"),
            post_layernorm=nn.LayerNorm(D, eps=config.layer_norm_eps),
        ))
        self.visual_projection = nn.Linear(D, config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding: the class token's final state, layer-normed and projected. Raises `ConfigError`
        when the pixels are not `image_size` square."""
        model = self.vision_model
        x = model.pre_layrnorm(model.embeddings(pixel_values))  # [B, 1 + N, D]
        x = model.encoder(x)
        pooled = model.post_layernorm(x[:, 0])  # [B, D]
        return self.visual_projection(pooled)


# In a full CLIPModel checkpoint (openai's repos: both towers in one `model.safetensors`), the vision tower's keys.
VISION_KEYS = ("vision_model.", "visual_projection.")


def load_vision_encoder(folder: Path, dtype: torch.dtype, device: torch.device | str,
                        lazy: bool = False) -> CLIPVisionEncoder:
    """Load the image encoder in `folder`: a `CLIPVisionModelWithProjection` folder (an unCLIP repo's
    `image_encoder/`), or a full CLIPModel folder such as openai/clip-vit-large-patch14, whose config nests
    `vision_config` and whose weights also hold the text tower, which is not read. Raises `CheckpointError` as
    `dalle_cli.checkpoint.load_weights` does, which with `lazy` reads the weights when first needed."""
    raw = read_json(folder / "config.json")
    config = from_config(CLIPVisionConfig, tower_config(raw, "vision_config"))
    prefixes = VISION_KEYS if "vision_config" in raw else None
    return load_weights(lambda: CLIPVisionEncoder(config), folder, "image_encoder", dtype, device, prefixes, lazy)
