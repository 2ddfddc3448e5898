"""The shapes world: a palette, a caption grammar, a scene sampler and a renderer.

Every image is a white canvas with one or two flat-coloured shapes; its caption states some of their attributes:

    one object    [prefix] a [small|large] <color> <shape> [in the <position>]
    two objects   [prefix] a <color> <shape> <relation> a <color> <shape>

with prefix "", "a picture of ", "an image of " or "a drawing of ", "an" before a vowel, and relation "left of"
(or "to the left of"), "right of" (or "to the right of"), "above" or "below". `parse_caption` reads any of these
wordings into one canonical `CaptionSpec`; `CaptionSpec.text()` writes the canonical wording (no prefix, "a"/"an",
short relation). An attribute the caption does not state is drawn at random: either size, any position.

Geometry, in fractions of the image side (x to the right, y down), so one scene renders at any resolution:
- every shape has a half-extent r (SIZES: small 0.10, large 0.16) and fills a 2r x 2r box: a disc of radius r, an
  axis-aligned square of side 2r, or an upright isosceles triangle of base 2r and height 2r (they fill π/4 ≈ 0.785,
  1 and 1/2 of that box, which is how the evaluator tells them apart);
- an object's `center` is its area centroid; for the triangle that is 2/3 of the way down from the apex;
- positions are the cells of a 3 x 3 grid (`cell_of`): "left" is the middle-left cell, "top left" the corner, ...;
  a stated position puts the centroid at least CELL_MARGIN inside its cell, and every object keeps BORDER clear of
  the image edge;
- "A left of B" means B's centroid is further right of A's than it is above or below it (`relation_holds`); the
  sampler makes that unambiguous: the boxes are GAP apart along the relation's axis and the centroids at most
  MAX_OFFSET apart across it, so objects never overlap.

Held-out pairs: the colour-shape pairs in HELD_OUT never appear in a scene sampled with `allow_held_out=False`,
neither alone nor in a two-object scene, so a model trained on such scenes has never seen, say, a green triangle;
scoring it on "a green triangle" measures compositional generalisation (the one-object held-out benchmark row).
Two-object scenes always use two different colours, so each stated colour names exactly one object.
"""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..errors import UsageError

# Pure colours are >= 106 apart in RGB, and a colour mixed with the white background at >= 50% coverage (an
# anti-aliased or blurred edge) stays >= 47 away from every other colour's line of white mixtures, the quantity the
# evaluator classifies by. The warm colours (red, orange, yellow, pink) are the crowded corner of RGB space; these
# values came from maximising that margin over boxes of recognisable hues, rounded.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 0, 20),
    "orange": (255, 125, 0),
    "yellow": (240, 230, 0),
    "green": (20, 170, 20),
    "blue": (20, 90, 240),
    "purple": (120, 20, 210),
    "pink": (250, 40, 190),
    "black": (0, 0, 0),
}
BACKGROUND = (255, 255, 255)
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.10, "large": 0.16}  # half-extent r, fraction of the image side
POSITIONS: dict[str, tuple[int, int]] = {  # name -> (column, row) on the 3 x 3 grid
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
RELATIONS = ("left of", "right of", "above", "below")
HELD_OUT = (("green", "triangle"), ("purple", "circle"), ("orange", "square"), ("pink", "triangle"))
PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ")
RELATION_WORDINGS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
                     "above": ("above",), "below": ("below",)}
BORDER = 0.02  # clear space between any object's box and the image edge
CELL_MARGIN = 0.04  # a stated position keeps the centroid this far inside its grid cell
GAP = 0.08  # two-object scenes: clear space between the boxes along the relation's axis
MAX_OFFSET = 0.08  # two-object scenes: largest centroid offset across the relation's axis
SUPERSAMPLE = 4  # render at 4x, then box-filter down: anti-aliased edges, exact colours inside


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption states about one object; None is an attribute it leaves unstated."""

    color: str
    shape: str
    size: str | None = None
    position: str | None = None

    def text(self) -> str:
        """The canonical phrase, e.g. "an orange circle" or "a large red square in the top left"."""
        words = " ".join(w for w in (self.size, self.color, self.shape) if w)
        phrase = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
        return f"{phrase} in the {self.position}" if self.position else phrase


@dataclass(frozen=True)
class CaptionSpec:
    """A parsed caption: one object, or two objects with `objects[0] <relation> objects[1]`."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def text(self, relation_wording: str | None = None) -> str:
        """The caption; canonical (and mapped back to this spec by `parse_caption`) unless `relation_wording`
        replaces the relation's words by another of its RELATION_WORDINGS."""
        if self.relation is None:
            return self.objects[0].text()
        return f"{self.objects[0].text()} {relation_wording or self.relation} {self.objects[1].text()}"

    def colours_swapped(self) -> "CaptionSpec":
        """The two-object caption with the colours exchanged between the shapes: the same colours, shapes and
        relation, bound the other way round (Ramesh et al. 2022, §7: attribute binding)."""
        a, b = self.objects
        return CaptionSpec((ObjectSpec(b.color, a.shape), ObjectSpec(a.color, b.shape)), self.relation)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; `center` is its area centroid (x, y) in fractions of the image side."""

    color: str
    shape: str
    size: str
    center: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one image, in caption order."""

    objects: tuple[SceneObject, ...]


def _object(i: int, sized: bool) -> str:
    """The regex of one object phrase; its groups are named color{i}, shape{i} and (if `sized`) size{i}."""
    size = rf"(?:(?P<size{i}>{'|'.join(SIZES)}) )?" if sized else ""
    return rf"an? {size}(?P<color{i}>{'|'.join(COLORS)}) (?P<shape{i}>{'|'.join(SHAPES)})"


_PREFIX = re.compile(r"^an? (?:picture|image|drawing) of ")
_ONE = re.compile(rf"^{_object(0, True)}(?: in the (?P<position>{'|'.join(POSITIONS)}))?$")
_TWO = re.compile(rf"^{_object(0, False)} (?P<relation>(?:to the )?(?:left|right) of|above|below) {_object(1, False)}$")


def parse_caption(text: str) -> CaptionSpec:
    """Read a shapes-world caption in any wording of the grammar (case, spacing and a final period are ignored).

    Raises `UsageError` for text outside the grammar; parse_caption(spec.text()) == spec for every spec.
    """
    words = _PREFIX.sub("", " ".join(text.lower().strip().rstrip(".").split()))
    if match := _ONE.match(words):
        return CaptionSpec((ObjectSpec(match["color0"], match["shape0"], match["size0"], match["position"]),))
    if match := _TWO.match(words):
        objects = (ObjectSpec(match["color0"], match["shape0"]), ObjectSpec(match["color1"], match["shape1"]))
        return CaptionSpec(objects, match["relation"].removeprefix("to the "))
    raise UsageError(f"not a shapes-world caption: {text!r}")


def cell_of(center: tuple[float, float]) -> str:
    """The name of the 3 x 3 grid cell that holds `center` (fractions of the image side)."""
    column, row = (min(2, max(0, int(v * 3))) for v in center)
    return next(name for name, cell in POSITIONS.items() if cell == (column, row))


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    """Whether centroid `a` stands in `relation` to centroid `b`: the displacement b - a points mostly along the
    relation's direction (|dx| > |dy| with dx > 0 for "left of", and so on)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along > abs(across)


def extents(shape: str, size: str) -> tuple[float, float, float, float]:
    """How far the shape reaches (left, up, right, down) from its centroid, in fractions of the image side."""
    r = SIZES[size]
    return (r, 4 * r / 3, r, 2 * r / 3) if shape == "triangle" else (r, r, r, r)


def _span(shape: str, size: str, position: str | None) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) the centroid may take: inside the image, and inside its cell when one is stated."""
    left, up, right, down = extents(shape, size)
    x0, y0, x1, y1 = BORDER + left, BORDER + up, 1 - BORDER - right, 1 - BORDER - down
    if position is not None:
        column, row = POSITIONS[position]
        x0, x1 = max(x0, column / 3 + CELL_MARGIN), min(x1, (column + 1) / 3 - CELL_MARGIN)
        y0, y1 = max(y0, row / 3 + CELL_MARGIN), min(y1, (row + 1) / 3 - CELL_MARGIN)
    return x0, y0, x1, y1


def _pairs(allow_held_out: bool, held_out_only: bool) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a scene may use."""
    if held_out_only:
        return list(HELD_OUT)
    return [(c, s) for c in COLORS for s in SHAPES if allow_held_out or (c, s) not in HELD_OUT]


def _sample_one(rng: random.Random, allow_held_out: bool, held_out_only: bool) -> tuple[CaptionSpec, Scene]:
    color, shape = rng.choice(_pairs(allow_held_out, held_out_only))
    size, position = rng.choice(tuple(SIZES)), rng.choice(tuple(POSITIONS))
    size_stated, position_stated = rng.random() < 0.5, rng.random() < 0.5
    spec = ObjectSpec(color, shape, size if size_stated else None, position if position_stated else None)
    return CaptionSpec((spec,)), Scene((_place_one(rng, color, shape, size, spec.position),))


def _place_one(rng: random.Random, color: str, shape: str, size: str, position: str | None) -> SceneObject:
    """The object with its centroid uniform over the image, or over its cell when `position` is given."""
    x0, y0, x1, y1 = _span(shape, size, position)
    return SceneObject(color, shape, size, (rng.uniform(x0, x1), rng.uniform(y0, y1)))


def _uniform_pair(rng: random.Random, span_a: tuple[float, float], span_b: tuple[float, float],
                  accept: Callable[[float, float], bool]) -> tuple[float, float]:
    """Uniform a in span_a and b in span_b, conditioned on accept(a, b) (rejection sampling)."""
    while True:
        a, b = rng.uniform(*span_a), rng.uniform(*span_b)
        if accept(a, b):
            return a, b


def _sample_two(rng: random.Random, allow_held_out: bool) -> tuple[CaptionSpec, Scene]:
    pairs = _pairs(allow_held_out, False)
    color_a, shape_a = rng.choice(pairs)
    color_b, shape_b = rng.choice([(c, s) for c, s in pairs if c != color_a])
    kinds = ((color_a, shape_a, rng.choice(tuple(SIZES))), (color_b, shape_b, rng.choice(tuple(SIZES))))
    relation = rng.choice(RELATIONS)
    spec = CaptionSpec((ObjectSpec(color_a, shape_a), ObjectSpec(color_b, shape_b)), relation)
    return spec, _place_two(rng, kinds, relation)


def _place_two(rng: random.Random, kinds: tuple[tuple[str, str, str], ...], relation: str) -> Scene:
    """Two objects, given as (colour, shape, size), placed so that the first stands in `relation` to the second."""
    axis = 0 if relation in ("left of", "right of") else 1  # the relation's axis: 0 is x, 1 is y
    low, high = (0, 1) if relation in ("left of", "above") else (1, 0)  # the object on the left / top comes first
    spans = [_span(shape, size, None) for _, shape, size in kinds]  # (x0, y0, x1, y1) each
    reach = extents(*kinds[low][1:])[2 + axis] + extents(*kinds[high][1:])[axis]  # low's right/down + high's left/up
    along = _uniform_pair(rng, spans[low][axis::2], spans[high][axis::2], lambda a, b: b - a >= reach + GAP)
    across = _uniform_pair(rng, spans[low][1 - axis::2], spans[high][1 - axis::2],
                           lambda a, b: abs(a - b) <= MAX_OFFSET)
    centers = {i: (along[k], across[k]) if axis == 0 else (across[k], along[k]) for k, i in enumerate((low, high))}
    return Scene(tuple(SceneObject(*kinds[i], centers[i]) for i in (0, 1)))


def scene_for(rng: random.Random, spec: CaptionSpec) -> Scene:
    """A random scene of which `spec` is true: what it leaves unstated (sizes, an unstated position, the exact
    placement) is drawn from `rng` as `sample_scene` draws it."""
    if spec.relation is None:
        [obj] = spec.objects
        size = obj.size or rng.choice(tuple(SIZES))
        return Scene((_place_one(rng, obj.color, obj.shape, size, obj.position),))
    kinds = tuple((obj.color, obj.shape, rng.choice(tuple(SIZES))) for obj in spec.objects)
    return _place_two(rng, kinds, spec.relation)


def sample_scene(rng: random.Random, *, allow_held_out: bool = False, kind: str = "mix", held_out_only: bool = False
                 ) -> tuple[str, Scene]:
    """Draw a random (caption, scene) pair; a function of the state of `rng` only.

    kind: "one" (one object), "two" (two objects and a relation) or "mix" (either, with probability 1/2). One-object
    captions state the size and the position each with probability 1/2. The caption's wording (prefix, relation
    phrasing) is drawn at random too; `parse_caption` recovers the stated spec. `held_out_only` draws one-object
    scenes of HELD_OUT pairs only (the benchmark's held-out row); otherwise HELD_OUT pairs appear only when
    `allow_held_out` is set.
    """
    if kind not in ("one", "two", "mix"):
        raise UsageError(f"kind must be 'one', 'two' or 'mix', got {kind!r}")
    if held_out_only and kind != "one":
        raise UsageError("held_out_only samples one-object scenes: use kind='one'")
    two = kind == "two" or kind == "mix" and rng.random() < 0.5
    spec, scene = _sample_two(rng, allow_held_out) if two else _sample_one(rng, allow_held_out, held_out_only)
    wording = rng.choice(RELATION_WORDINGS[spec.relation]) if spec.relation else None
    return rng.choice(PREFIXES) + spec.text(wording), scene


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    """Draw one object on a side x side canvas. Its box is snapped to whole canvas pixels [x0, x1) x [y0, y1) (an
    error of at most 1/(2·SUPERSAMPLE) of an output pixel); PIL's corner coordinates are inclusive pixel indices."""
    left, up, right, down = extents(obj.shape, obj.size)
    x, y = obj.center
    x0, y0, x1, y1 = (round(v * side) for v in (x - left, y - up, x + right, y + down))
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon(((x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)), fill=fill)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a size x size RGB image: drawn at SUPERSAMPLE x the size, then box-filtered down, so edges are
    anti-aliased while every pixel fully inside a shape keeps its exact palette colour."""
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, side)
    return canvas.resize((size, size), Image.Resampling.BOX)


def image_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image as a uint8 tensor of shape (3, H, W)."""
    rgb = image.convert("RGB")
    flat = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)  # (H*W*3,)
    return flat.view(rgb.height, rgb.width, 3).permute(2, 0, 1)  # (3, H, W)


def render_batch(scenes: list[Scene], size: int = 64) -> Tensor:
    """`render` every scene into one uint8 tensor of shape (N, 3, size, size)."""
    return torch.stack([image_to_tensor(render(scene, size)) for scene in scenes])
