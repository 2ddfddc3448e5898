"""What a `shapes` model's CLIP towers can read from an image: zero-shot accuracy on rendered scenes.

    python benchmarks/shapes_clip_probe.py [--n 300] [--seed 77] [--model shapes]

unCLIP's prior can only put into an image embedding what CLIP's towers encode (Ramesh et al. 2022, §2), so an
attribute the towers cannot read is one the generated images cannot follow. For each probe, `--n` ground-truth
scenes are drawn by the dataset's grammar and rendered at 64 px, embedded by the image tower exactly as `dalle vary`
embeds a picture, and compared with the text embeddings of captions that differ only in the probed attribute; the
probe is right when the scene's own caption is the nearest. Chance is one over the number of candidates, printed
beside each figure.
"""

import argparse
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dalle_cli.images import preprocess
from dalle_cli import load
from dalle_cli.shapes.world import (COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, CaptionSpec, ObjectSpec, Scene,
                                    parse_caption, render, sample_scene)

Candidates = Callable[[CaptionSpec], list[CaptionSpec]]


def _positions(spec: CaptionSpec) -> list[CaptionSpec]:
    [a] = spec.objects
    return [CaptionSpec((ObjectSpec(a.color, a.shape, a.size, p),)) for p in POSITIONS]


def _sizes(spec: CaptionSpec) -> list[CaptionSpec]:
    [a] = spec.objects
    return [CaptionSpec((ObjectSpec(a.color, a.shape, z, a.position),)) for z in SIZES]


def _colour_shape(spec: CaptionSpec) -> list[CaptionSpec]:
    [a] = spec.objects
    return [CaptionSpec((ObjectSpec(c, s, a.size, a.position),)) for c in COLORS for s in SHAPES]


def _relations(spec: CaptionSpec) -> list[CaptionSpec]:
    return [CaptionSpec(spec.objects, r) for r in RELATIONS]


def _binding(spec: CaptionSpec) -> list[CaptionSpec]:
    return [spec, spec.colours_swapped()]


def _two_shapes(spec: CaptionSpec) -> list[CaptionSpec]:
    a, b = spec.objects
    return [CaptionSpec((ObjectSpec(a.color, s), ObjectSpec(b.color, t)), spec.relation)
            for s in SHAPES for t in SHAPES]


# probe name -> (which scenes, which candidate captions)
PROBES: dict[str, tuple[str, Candidates]] = {
    "one object: colour and shape": ("one", _colour_shape),
    "one object: stated size": ("sized", _sizes),
    "one object: stated position": ("positioned", _positions),
    "two objects: both shapes": ("two", _two_shapes),
    "two objects: binding": ("two", _binding),
    "two objects: relation": ("two", _relations),
}


def _scenes(rng: random.Random, n: int, kind: str) -> list[tuple[CaptionSpec, Scene]]:
    """`n` scenes of `kind`: one, two, or one object whose caption states its position (positioned) or its size
    (sized)."""
    stated = {"positioned": "position", "sized": "size"}.get(kind)
    drawn: list[tuple[CaptionSpec, Scene]] = []
    while len(drawn) < n:
        caption, scene = sample_scene(rng, kind="two" if kind == "two" else "one")
        spec = parse_caption(caption)
        if stated is None or getattr(spec.objects[0], stated) is not None:
            drawn.append((spec, scene))
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="scenes per probe")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    parts = load(args.model, device="cpu").parts
    rng = random.Random(args.seed)

    @torch.no_grad()
    def text_embeds(specs: list[CaptionSpec]) -> torch.Tensor:
        ids = torch.tensor(parts.tokenizer.encode([s.text() for s in specs]).input_ids)
        return F.normalize(parts.text_encoder(ids)[0], dim=-1)  # [K, D]

    @torch.no_grad()
    def image_embeds(scenes: list[Scene]) -> torch.Tensor:
        pixels = preprocess([render(scene, 64) for scene in scenes], parts.preprocess)  # [N, 3, S, S]
        return F.normalize(torch.cat([parts.image_encoder(p[None]) for p in pixels]), dim=-1)  # [N, D]

    print(f"{args.model}: zero-shot, {args.n} rendered scenes per probe, seed {args.seed}")
    for name, (kind, candidates) in PROBES.items():
        drawn = _scenes(rng, args.n, kind)
        images = image_embeds([scene for _, scene in drawn])
        right = 0
        for (spec, _), image in zip(drawn, images):
            options = candidates(spec)
            right += options[int((text_embeds(options) @ image).argmax())] == spec
        print(f"{name:32} {100 * right / args.n:5.1f} %   (chance {100 / len(candidates(drawn[0][0])):.1f} %)")


if __name__ == "__main__":
    main()
