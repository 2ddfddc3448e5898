"""The transformer encoder shared by CLIP's text and vision towers (Radford et al. 2021, arXiv 2103.00020, §2.4).

Both towers stack the same pre-norm block (Vaswani et al. 2017 with the layer norms moved in front, as in GPT-2):
x = x + Attention(LayerNorm(x)); x = x + MLP(LayerNorm(x)). Only the masking differs: the text tower attends causally,
the vision tower attends everywhere. Parameter names follow transformers' `CLIPEncoder` (`layers.{i}.self_attn.q_proj`,
`layers.{i}.mlp.fc1`, `layers.{i}.layer_norm1`, ...), so a tower's checkpoint loads strictly.
"""

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import check_choice
from ..errors import ConfigError


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016, §2)."""
    return x * torch.sigmoid(1.702 * x)


# The `hidden_act` names dalle implements, as transformers' ACT2FN spells them.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"quick_gelu": quick_gelu, "gelu": F.gelu}


def tower_config(raw: Mapping[str, Any], tower: str) -> Mapping[str, Any]:
    """The `tower` ("text_config" or "vision_config") part of a combined CLIPConfig dictionary, as `CLIPModel` reads
    it: the nested dictionary, with the top-level `projection_dim` (default 512) that sizes both projections. A
    single-tower config (no nested `tower` key) is returned as is."""
    if tower not in raw:
        return raw
    return {**(raw[tower] or {}), "projection_dim": raw.get("projection_dim", 512)}


class Attention(nn.Module):
    """Multi-head self-attention: [B, L, D] -> [B, L, D], with an optional boolean mask [B, 1, L, L] (True = attend)
    or else, when `causal`, the causal pattern. Each head computes softmax(q k^T / sqrt(d_head)) v (Vaswani et al.
    2017, eq. 1)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        B, L, D = x.shape
        head_dim = D // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, L, self.heads, head_dim).transpose(1, 2)  # [B, H, L, d_head]

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=head_dim**-0.5)
        # y: [B, H, L, d_head]
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    """The block's feed-forward part: fc1 -> activation -> fc2, [..., D] -> [..., D]."""

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """One pre-norm transformer block: [B, L, D] -> [B, L, D]."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float):
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask, causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """A stack of `layers` blocks. Raises `ConfigError` for an activation outside `ACTIVATIONS` or a width that the
    heads do not divide; `component` names the network in the message."""

    def __init__(self, width: int, heads: int, mlp_width: int, layers: int, act: str, eps: float, component: str):
        super().__init__()
        check_choice(component, "hidden_act", act, tuple(ACTIVATIONS))
        if width % heads != 0:
            raise ConfigError(f"{component}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
        self.layers = nn.ModuleList(EncoderLayer(width, heads, mlp_width, act, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]. Give at most one of `mask`, a boolean [B, 1, L, L] (True = attend) that already
        holds any causal pattern, and `causal`, for plain causal attention."""
        for layer in self.layers:
            x = layer(x, mask, causal)
        return x
