"""How Kandinsky 2.2's decoder UNet reads its only conditioning, the CLIP image embedding.

Kandinsky 2.2 (Razzhigaev et al. 2023, "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent
Diffusion") drops the text from the decoder: the prior's image embedding [B, D] conditions the UNet twice, as in
unCLIP's decoder (Ramesh et al. 2022, §2.1) but without text tokens:
- added to the timestep embedding (diffusers' `addition_embed_type: "image"`, `ImageTimeEmbedding`), and
- projected to `IMAGE_TOKENS` context tokens that the attention layers attend to (`encoder_hid_dim_type:
  "image_proj"`, `ImageProjection`).
Parameter names follow those two diffusers classes (`add_embedding.image_proj/image_norm`,
`encoder_hid_proj.image_embeds/norm`).
"""

import torch
from torch import nn

# The number of context tokens made from one image embedding. diffusers' UNet2DConditionModel builds its
# `ImageProjection` without passing a token count, so every checkpoint it loads has the class default, 32; no config
# key can change it (the loader would reject any other count as a shape mismatch).
IMAGE_TOKENS = 32


class ImageTimeEmbedding(nn.Module):
    """The image embedding's share of the time embedding: LayerNorm(Linear(image_embeds)), [B, D] -> [B, time_dim].

    The UNet adds it to the timestep (and class) embedding before any nonlinearity."""

    def __init__(self, embed_dim: int, time_dim: int):
        super().__init__()
        self.image_proj = nn.Linear(embed_dim, time_dim)
        self.image_norm = nn.LayerNorm(time_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.image_norm(self.image_proj(image_embeds))


class ImageContextTokens(nn.Module):
    """The attention context made from the image embedding: one Linear to `tokens` x `context_dim`, split into tokens,
    each LayerNorm-ed on its own: [B, D] -> [B, tokens, context_dim]."""

    def __init__(self, embed_dim: int, context_dim: int, tokens: int = IMAGE_TOKENS):
        super().__init__()
        self.tokens = tokens
        self.image_embeds = nn.Linear(embed_dim, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(image_embeds)  # [B, tokens * context_dim]
        return self.norm(tokens.view(tokens.shape[0], self.tokens, -1))  # [B, tokens, context_dim]
