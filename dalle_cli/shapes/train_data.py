"""Training data for the `shapes` model: freshly rendered shapes-world batches, and the views each stage reads.

Every batch is drawn from a `random.Random` (scenes and captions) and rendered at 64 px, the super-resolution
stage's output size. The 32 px view that the decoder learns to draw and that the CLIP image tower sees is the 64 px
image downsampled with an antialiased bicubic filter, the same filter (up to rounding) as the Pillow resize of the
`feature_extractor` that `dalle vary` applies to a generated 64 px picture. Held-out colour-shape pairs never
appear: every scene is sampled with `allow_held_out=False`.
"""

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..models.clip_text import CLIPTextEncoder
from ..models.clip_vision import CLIPVisionEncoder
from ..tokenizer import Tokenizer
from .world import COLORS, SHAPES, CaptionSpec, ObjectSpec, parse_caption, render_batch, sample_scene

IMAGE_SIZE = 64  # the super-resolution output
DECODER_SIZE = 32  # the decoder output and the CLIP image tower input
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class Batch:
    """Captions [B] and their images [B, 3, 64, 64] in [-1, 1]."""

    captions: list[str]
    images: Tensor


def sample_batch(rng: random.Random, size: int) -> Batch:
    """`size` random one- or two-object scenes (half each on average) from the seen pairs, rendered at 64 px."""
    drawn = [sample_scene(rng, kind="mix") for _ in range(size)]
    pixels = render_batch([scene for _, scene in drawn], IMAGE_SIZE)  # [B, 3, 64, 64] uint8
    return Batch([caption for caption, _ in drawn], pixels.float() / 127.5 - 1.0)


def downsample(images: Tensor) -> Tensor:
    """[B, 3, 64, 64] -> [B, 3, 32, 32], antialiased bicubic (as Pillow's BICUBIC resize), clamped to [-1, 1]."""
    size = (DECODER_SIZE, DECODER_SIZE)
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1.0, 1.0)


def upsample(images: Tensor) -> Tensor:
    """[B, 3, 32, 32] -> [B, 3, 64, 64] exactly as the unCLIP pipeline feeds the super-resolution stage."""
    return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True, align_corners=False)


def clip_pixels(images: Tensor) -> Tensor:
    """32 px images in [-1, 1] -> the CLIP image tower's input, normalised as the feature extractor does."""
    mean = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    return ((images + 1.0) / 2.0 - mean) / std


def hard_negative(rng: random.Random, caption: str) -> str:
    """A caption that contradicts `caption` in one attribute, as an extra contrastive negative for the text tower.

    Two objects: the colours swapped between the shapes (binding) or the relation reversed. One object: another
    colour or another shape. These are the distinctions in-batch negatives rarely force (Ramesh et al. 2022, §7,
    name attribute binding as unCLIP's weak spot). A negative may name a HELD_OUT pair: such text is only ever
    contrasted against images of other pairs, never paired with an image of its own (none is ever rendered)."""
    spec = parse_caption(caption)
    a = spec.objects[0]
    if spec.relation is not None:
        b = spec.objects[1]
        if rng.random() < 0.5:
            swapped = (ObjectSpec(b.color, a.shape), ObjectSpec(a.color, b.shape))
            return CaptionSpec(swapped, spec.relation).text()
        return CaptionSpec(spec.objects, OPPOSITE[spec.relation]).text()
    if rng.random() < 0.5:
        other = ObjectSpec(rng.choice([c for c in COLORS if c != a.color]), a.shape, a.size, a.position)
    else:
        other = ObjectSpec(a.color, rng.choice([s for s in SHAPES if s != a.shape]), a.size, a.position)
    return CaptionSpec((other,)).text()


def tokenize(tokenizer: Tokenizer, captions: list[str]) -> tuple[Tensor, Tensor]:
    """Token ids [B, L] (long) and the token mask [B, L] (bool, True on real tokens)."""
    encoding = tokenizer.encode(captions)
    return torch.tensor(encoding.input_ids), torch.tensor(encoding.attention_mask).bool()


@dataclass
class Features:
    """What the frozen CLIP towers say about a batch: text embeddings [B, D], token states [B, L, D], the token
    mask [B, L] and the image embeddings [B, D] of the 32 px views."""

    text_embeds: Tensor
    text_states: Tensor
    text_mask: Tensor
    image_embeds: Tensor


@torch.no_grad()
def clip_features(tokenizer: Tokenizer, text_encoder: CLIPTextEncoder, image_encoder: CLIPVisionEncoder,
                  captions: list[str], small_images: Tensor) -> Features:
    """Encode `captions` and the 32 px images as the pipeline does: the text tower without an attention mask
    (padding follows the end token, so the causal mask already hides it), the image tower on normalised pixels."""
    ids, mask = tokenize(tokenizer, captions)
    embeds, states = text_encoder(ids)  # [B, D], [B, L, D]
    return Features(embeds, states, mask, image_encoder(clip_pixels(small_images)))
