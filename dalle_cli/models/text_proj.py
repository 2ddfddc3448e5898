"""The unCLIP text projection: turns CLIP embeddings into the decoder's conditioning.

Ramesh et al. 2022 (unCLIP, §2.1): the decoder is GLIDE conditioned on CLIP image embeddings "by projecting and
adding CLIP embeddings to the existing timestep embedding, and by projecting CLIP embeddings into four extra tokens
of context that are concatenated to the sequence of outputs from the GLIDE text encoder". Karlo also projects the
CLIP text embedding into the timestep embedding, and uses the CLIP text token states as the text encoder outputs.

Parameter names follow diffusers' `UnCLIPTextProjModel`.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TextProjConfig:
    """The text projection's `config.json`; the reference has no defaults for the two widths of the decoder."""

    time_embed_dim: int  # the decoder's timestep embedding width
    cross_attention_dim: int  # the decoder's cross-attention context width
    clip_extra_context_tokens: int = 4
    clip_embeddings_dim: int = 768


class TextProjection(nn.Module):
    """CLIP image embedding + CLIP text embedding + text token states -> (decoder context, additive time embedding)."""

    def __init__(self, config: TextProjConfig):
        super().__init__()
        self.config = config
        clip, extra, cross = config.clip_embeddings_dim, config.clip_extra_context_tokens, config.cross_attention_dim
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(clip))
        self.embedding_proj = nn.Linear(clip, config.time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(clip, config.time_embed_dim)
        self.clip_extra_context_tokens_proj = nn.Linear(clip, extra * cross)
        self.encoder_hidden_states_proj = nn.Linear(clip, cross)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cross)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        prompt_embeds: torch.Tensor,
        text_encoder_hidden_states: torch.Tensor,
        do_classifier_free_guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the decoder's conditioning.

        image_embeddings: CLIP image embeddings [N, clip]. prompt_embeds [B, clip] and text_encoder_hidden_states
        [B, L, clip] are the CLIP text embedding and token states, where B = 2N under classifier-free guidance (the
        unconditional half first) and B = N otherwise. Under guidance the unconditional half's image embedding is
        the learned null embedding. Returns the context [B, extra + L, cross] (extra tokens first) and the additive
        time embedding [B, time_embed_dim].
        """
        if do_classifier_free_guidance:
            null = self.learned_classifier_free_guidance_embeddings.expand(image_embeddings.shape[0], -1)  # [N, clip]
            image_embeddings = torch.cat([null, image_embeddings])  # [B, clip]
        b = prompt_embeds.shape[0]
        time = self.clip_image_embeddings_project_to_time_embeddings(image_embeddings) + self.embedding_proj(
            prompt_embeds)  # [B, time_embed_dim]

        # The projection's output is laid out channel-major: [B, cross * extra] -> [B, cross, extra] -> [B, extra, cross].
        extra = self.clip_extra_context_tokens_proj(image_embeddings).reshape(
            b, -1, self.config.clip_extra_context_tokens).transpose(1, 2)
        text = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_encoder_hidden_states))
        return torch.cat([extra, text], dim=1), time  # [B, extra + L, cross], [B, time_embed_dim]
