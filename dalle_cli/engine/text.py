"""CLIP text conditioning as the unCLIP families feed it to their priors and decoders, with classifier-free guidance's
unconditional rows."""

from dataclasses import dataclass

import torch

from ..models.clip_text import CLIPTextEncoder
from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class TextConditioning:
    """CLIP text conditioning of a batch of B prompts: embeddings [B', D], hidden states [B', L, D] and the token mask
    [B', L]. With `guided`, B' = 2B and the unconditional prompt's rows come first (the reference pipelines' order)."""

    embeds: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor
    guided: bool

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The prompts' own text embeddings [B, D], without the unconditional rows."""
        return self.embeds[self.embeds.shape[0] // 2:] if self.guided else self.embeds


def encode_text(tokenizer: Tokenizer, encoder: CLIPTextEncoder, prompts: list[str], unconditional: str | None,
                device: torch.device) -> TextConditioning:
    """The conditioning of `prompts`; with an `unconditional` prompt ("" for none, a negative prompt), its rows are
    added first for guidance. It is encoded once, in the same batch, and shared by every row."""
    batch = [*prompts, unconditional] if unconditional is not None else prompts
    tokens = tokenizer.encode(batch)
    ids = torch.tensor(tokens.input_ids, device=device)
    mask = torch.tensor(tokens.attention_mask, device=device).bool()
    embeds, hidden = encoder(ids)  # [B(+1), D], [B(+1), L, D]
    if unconditional is None:
        return TextConditioning(embeds, hidden, mask, False)
    n = len(prompts)

    def with_uncond(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[n:].expand(n, *x.shape[1:]), x[:n]])

    return TextConditioning(with_uncond(embeds), with_uncond(hidden), with_uncond(mask), True)
