"""The unCLIP diffusion prior: a causal decoder-only Transformer that denoises a CLIP image embedding.

Ramesh et al. 2022 (unCLIP, §2.2): the prior models p(z_i | y) as a diffusion process whose Transformer reads the
sequence [text token states (L), CLIP text embedding, timestep embedding, noised image embedding z_t, learned "prd"
token] under a causal mask, and predicts the clean image embedding from the output at the final token. Latents live
in a normalised space; `post_process_latents` maps them back with the stored CLIP statistics.

Parameter names follow diffusers' `PriorTransformer`, so Karlo's and Kandinsky 2.2's checkpoints load as they are.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import check_choice
from .embeddings import TimestepEmbedding, timestep_batch, timestep_embedding

MASK_VALUE = -10000.0  # the additive attention bias the reference uses for a masked position


@dataclass(frozen=True)
class PriorConfig:
    """The prior's `config.json`; defaults are those of diffusers' `PriorTransformer`."""

    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768  # width of the CLIP embeddings read and written
    num_embeddings: int = 77  # text tokens L in `encoder_hidden_states`
    additional_embeddings: int = 4  # text embedding, timestep, z_t and the prd token
    dropout: float = 0.0  # training only: dropout is the identity at inference
    time_embed_act_fn: str = "silu"
    norm_in_type: str | None = None  # None or "layer"
    embedding_proj_norm_type: str | None = None  # None or "layer"
    encoder_hid_proj_type: str | None = "linear"
    added_emb_type: str | None = "prd"
    time_embed_dim: int | None = None  # None: num_attention_heads * attention_head_dim
    embedding_proj_dim: int | None = None  # None: embedding_dim
    clip_embed_dim: int | None = None  # None: embedding_dim

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased projections and an additive float mask, as diffusers' `Attention`."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, heads * head_dim)
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = nn.Linear(dim, heads * head_dim)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, S, dim], bias [B, 1, S, S] added to the attention logits -> [B, S, dim]."""
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
                   for proj in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, S, Dh]
        return self.to_out(y.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))  # [B, S, dim]


class GELUProjection(nn.Module):
    """A linear layer followed by exact (erf) GELU: the first half of diffusers' `FeedForward`."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """dim -> 4 dim -> dim MLP with GELU; `net.1` is the (inference no-op) dropout, so the weights are net.0 and
    net.2."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(GELUProjection(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(norm1(x)), then x + ff(norm3(x)) (diffusers' `BasicTransformerBlock`)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        dim = config.inner_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, config.num_attention_heads, config.attention_head_dim, config.dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        return x + self.ff(self.norm3(x))


class PriorTransformer(nn.Module):
    """The prior network; see the module docstring. `config` is kept for the pipeline (e.g. `embedding_dim`).

    Raises `ConfigError` for configuration values dalle does not implement: `encoder_hid_proj_type` other than
    "linear", `added_emb_type` other than "prd", `additional_embeddings` other than 4, or unknown norm types.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        check_choice("prior", "norm_in_type", config.norm_in_type, (None, "layer"))
        check_choice("prior", "embedding_proj_norm_type", config.embedding_proj_norm_type, (None, "layer"))
        check_choice("prior", "encoder_hid_proj_type", config.encoder_hid_proj_type, ("linear",))
        check_choice("prior", "added_emb_type", config.added_emb_type, ("prd",))
        # The four extra tokens are exactly the ones listed in PriorConfig; the mask and positions assume it.
        check_choice("prior", "additional_embeddings", config.additional_embeddings, (4,))
        self.config = config
        dim = config.inner_dim
        embedding_proj_dim = config.embedding_proj_dim or config.embedding_dim
        clip_embed_dim = config.clip_embed_dim or config.embedding_dim

        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim or dim, config.time_embed_act_fn, dim)
        self.proj_in = nn.Linear(config.embedding_dim, dim)
        self.embedding_proj_norm = nn.LayerNorm(embedding_proj_dim) if config.embedding_proj_norm_type else None
        self.embedding_proj = nn.Linear(embedding_proj_dim, dim)
        self.encoder_hidden_states_proj = nn.Linear(config.embedding_dim, dim)
        self.positional_embedding = nn.Parameter(
            torch.zeros(1, config.num_embeddings + config.additional_embeddings, dim))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm_in = nn.LayerNorm(dim) if config.norm_in_type else None
        self.norm_out = nn.LayerNorm(dim)
        self.proj_to_clip_embeddings = nn.Linear(dim, clip_embed_dim)
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Text padding mask [B, L] (True = keep) -> additive bias [B, 1, S, S], S = L + additional_embeddings.

        Padded text positions get -10000, the extra tokens are never masked as keys, and the causal mask adds
        another -10000 above the diagonal, all computed in `dtype` in the reference's order, so fp16 and bf16
        runs round exactly as diffusers does.
        """
        text = (1 - attention_mask.to(dtype)) * MASK_VALUE  # [B, L]
        keys = F.pad(text, (0, self.config.additional_embeddings), value=0.0)  # [B, S]
        s = keys.shape[1]
        causal = torch.full((s, s), MASK_VALUE, dtype=dtype, device=keys.device).triu_(1)  # [S, S]
        return (keys[:, None, :] + causal)[:, None]  # [B, 1, S, S]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: int | torch.Tensor,
        proj_embedding: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the clean image embedding.

        hidden_states: the noised image embedding z_t [B, embedding_dim]; timestep: an int or a tensor of shape
        [] or [B]; proj_embedding: the CLIP text embedding [B, embedding_proj_dim]; encoder_hidden_states: the CLIP
        text token states [B, num_embeddings, embedding_dim]; attention_mask: bool [B, num_embeddings], True for
        real tokens. Returns [B, clip_embed_dim], still in the normalised latent space.
        """
        b = hidden_states.shape[0]
        dtype = self.proj_in.weight.dtype
        t = timestep_batch(timestep, b, hidden_states.device)  # [B]
        time = self.time_embedding(timestep_embedding(t, self.config.inner_dim, True, 0).to(dtype))  # [B, D]

        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        tokens = torch.cat([
            self.encoder_hidden_states_proj(encoder_hidden_states),  # [B, L, D]
            self.embedding_proj(proj_embedding)[:, None],  # [B, 1, D]
            time[:, None],  # [B, 1, D]
            self.proj_in(hidden_states)[:, None],  # [B, 1, D]
            self.prd_embedding.to(dtype).expand(b, -1, -1),  # [B, 1, D]
        ], dim=1)  # [B, S, D]
        x = tokens + self.positional_embedding.to(dtype)

        bias = self.attention_bias(attention_mask, x.dtype)
        if self.norm_in is not None:
            x = self.norm_in(x)
        for block in self.transformer_blocks:
            x = block(x, bias)
        x = self.norm_out(x)
        return self.proj_to_clip_embeddings(x[:, -1])  # [B, clip_embed_dim], read at the prd token

    def post_process_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the prior's normalisation: latents * clip_std + clip_mean, [B, clip_embed_dim]."""
        return latents * self.clip_std.to(latents.device) + self.clip_mean.to(latents.device)
