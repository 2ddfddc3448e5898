"""CLIP's text tower with its projection (Radford et al. 2021, arXiv 2103.00020, §2.4): token ids to a text
embedding in the joint CLIP space, plus the per-token hidden states unCLIP also conditions on (Ramesh et al. 2022, §2).

A causal transformer over token + learned position embeddings; a final layer norm; the hidden state at the
end-of-text token, projected without bias, is the text embedding. Parameter names equal transformers'
`CLIPTextModelWithProjection` state dict (`text_model.embeddings.token_embedding.weight`, ...,
`text_projection.weight`).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .clip_layers import Encoder


@dataclass
class CLIPTextConfig:
    """transformers' `CLIPTextConfig` fields that shape the network, with its defaults (the ViT-B/32 text tower).

    `eos_token_id` decides pooling (see `CLIPTextEncoder.forward`); `bos_token_id` and `pad_token_id` describe the
    tokenizer the weights were trained with and do not change the network."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407


# Configs written before transformers PR #24773 carry this wrong `eos_token_id`; transformers keeps their old pooling.
LEGACY_EOS_TOKEN_ID = 2


class CLIPTextEncoder(nn.Module):
    """Token ids [B, L] -> (text_embeds [B, projection_dim], last_hidden_state [B, L, hidden_size])."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.text_model = nn.ModuleDict(dict(
            embeddings=nn.ModuleDict(dict(
                token_embedding=nn.Embedding(config.vocab_size, D),
                position_embedding=nn.Embedding(config.max_position_embeddings, D),
            )),
            encoder=Encoder(D, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers,
                            config.hidden_act, config.layer_norm_eps, "text_encoder"),
            final_layer_norm=nn.LayerNorm(D, eps=config.layer_norm_eps),
        ))
        self.text_projection = nn.Linear(D, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode token ids [B, L] (long), L <= max_position_embeddings.

        Attention is causal; `attention_mask` [B, L] (1 = token, 0 = padding) also hides padded keys. The hidden
        states are returned after the final layer norm. The text embedding pools the end-of-text position, exactly as
        transformers does: the first position holding `eos_token_id`, or, for legacy configs whose `eos_token_id` is 2,
        the position of the largest token id (the end-of-text token has CLIP's largest id). Raises `UsageError` for a
        sequence longer than the position table.
        """
        B, L = input_ids.shape
        model = self.text_model
        if L > self.config.max_position_embeddings:
            raise UsageError(f"{L} tokens given, but the text encoder reads at most "
                             f"{self.config.max_position_embeddings}")
        positions = torch.arange(L, device=input_ids.device)
        x = model.embeddings.token_embedding(input_ids) + model.embeddings.position_embedding(positions)  # [B, L, D]
        if attention_mask is None:
            x = model.encoder(x, causal=True)
        else:
            causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()  # [L, L]
            mask = causal & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]
            x = model.encoder(x, mask=mask)
        x = model.final_layer_norm(x)  # [B, L, D]
        ids = input_ids.to(torch.int)
        if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID:
            end = ids.argmax(dim=-1)  # [B]
        else:
            end = (ids == self.config.eos_token_id).int().argmax(dim=-1)  # [B], first end-of-text token
        pooled = x[torch.arange(B, device=x.device), end]  # [B, D]
        return self.text_projection(pooled), x
