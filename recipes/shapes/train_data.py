"""Training data for the `shapes` model: freshly rendered shapes-world batches, and the views each stage reads.

Every batch is drawn from a `random.Random` (scenes and captions) and rendered at 64 px, the super-resolution
stage's output size. The 32 px view that the decoder learns to draw and that the CLIP image tower sees is the 64 px
image downsampled with an antialiased bicubic filter, the same filter (up to rounding) as the Pillow resize of the
`feature_extractor` that `dalle vary` applies to a generated 64 px picture. Held-out colour-shape pairs never
appear: every scene is sampled with `allow_held_out=False`, and no counterfactual twin names one.
"""

import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from dalle_cli.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dalle_cli.models.clip_text import CLIPTextEncoder
from dalle_cli.models.clip_vision import CLIPVisionEncoder
from dalle_cli.shapes.world import (COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, CaptionSpec, Scene, parse_caption,
                                    render_batch, sample_scene, scene_for)
from dalle_cli.tokenizer import Tokenizer

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
    return _rendered([caption for caption, _ in drawn], [scene for _, scene in drawn])


def _rendered(captions: list[str], scenes: list[Scene]) -> Batch:
    """The batch of `captions` and their `scenes` rendered at 64 px, in [-1, 1]."""
    pixels = render_batch(scenes, IMAGE_SIZE)  # [B, 3, 64, 64] uint8
    return Batch(captions, pixels.float() / 127.5 - 1.0)


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
    """A caption that contradicts `caption` in one attribute, and names no HELD_OUT pair.

    Two objects: half the time one object's shape changed; a quarter of the time the colours swapped between the
    shapes (binding), unless that names a HELD_OUT pair; otherwise the relation reversed. One object: another grid
    cell when the caption states a position, otherwise another colour, another shape or (when stated) the other
    size. Ramesh et al. (2022, §7) name attribute binding and spatial relations as unCLIP's weak spots: two random
    captions of a batch almost always differ in colour or shape as well, so in-batch negatives alone never teach
    CLIP where things are."""
    spec = parse_caption(caption)
    a = spec.objects[0]
    if spec.relation is not None:
        draw = rng.random()
        if draw < 0.5:
            return rng.choice(_one_shape_changed(spec)).text()
        swapped = spec.colours_swapped()
        if draw < 0.75 and not any((o.color, o.shape) in HELD_OUT for o in swapped.objects):
            return swapped.text()
        return CaptionSpec(spec.objects, OPPOSITE[spec.relation]).text()
    if a.position is not None:
        return CaptionSpec((replace(a, position=rng.choice([p for p in POSITIONS if p != a.position])),)).text()
    options = [replace(a, color=c) for c in COLORS if c != a.color and (c, a.shape) not in HELD_OUT]
    options += [replace(a, shape=s) for s in SHAPES if s != a.shape and (a.color, s) not in HELD_OUT]
    options += [replace(a, size=z) for z in SIZES if a.size is not None and z != a.size]
    return CaptionSpec((rng.choice(options),)).text()


def _one_shape_changed(spec: CaptionSpec) -> list[CaptionSpec]:
    """The two-object captions that give one of `spec`'s objects another shape (never a HELD_OUT pair)."""
    a, b = spec.objects
    firsts = [CaptionSpec((replace(a, shape=s), b), spec.relation) for s in SHAPES if (a.color, s) not in HELD_OUT]
    seconds = [CaptionSpec((a, replace(b, shape=s)), spec.relation) for s in SHAPES if (b.color, s) not in HELD_OUT]
    return [c for c in firsts + seconds if c != spec]


def sample_contrast_batch(rng: random.Random, size: int) -> Batch:
    """`size` // 2 scenes as `sample_batch` draws them, then for each a counterfactual twin: a scene drawn for its
    `hard_negative` caption. A twin is the positive of its own caption and the hardest negative of its original's,
    in both directions of CLIP's loss, so the image tower must see the contradicted attribute (where an object is,
    which colour sits on which shape) and the text tower must read it."""
    drawn = [sample_scene(rng, kind="mix") for _ in range(size // 2)]
    twins = [hard_negative(rng, caption) for caption, _ in drawn]
    scenes = [scene for _, scene in drawn] + [scene_for(rng, parse_caption(twin)) for twin in twins]
    return _rendered([caption for caption, _ in drawn] + twins, scenes)


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
