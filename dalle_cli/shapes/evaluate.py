"""A model-free judge of shapes-world images: find the objects, read their attributes, compare with the caption.

`detect` turns an image into blobs in four steps:
1. The image is white-balanced on its background (`_rgb`). Every pixel is then read as a mixture of one palette
   colour with the white background, p = W + α (c - W): its colour is the c whose line of mixtures passes closest
   to p, its coverage α the mixture weight. A pixel is part of an object when α >= MIN_COVERAGE (more object than
   background; for a blurred edge this is where the true edge was) and it lies within MAX_RESIDUAL of that line
   (otherwise its colour is not one of the palette's). Reading mixtures, not nearest colours, keeps anti-aliased
   and blurred edges from turning into rings of some lighter colour (half-covered red is much nearer pink than
   red).
2. Pixels of one colour that touch (8-neighbourhood) form a component.
3. Components of the same colour whose boxes are at most MERGE_GAP apart are one object broken in pieces, and are
   merged; then objects smaller than MIN_AREA (a quarter of the smallest object the world draws) are noise and
   dropped.
4. Each blob is measured on its soft coverage α (its own pixels and the background pixels around it, so that a
   partly covered edge pixel counts as much as it is covered), divided by its peak (a washed-out object, drawn at
   less than full strength, measures like a full one): its area Σα, centroid, the skewness of its
   vertical mass profile, and its fill ratio area / (largest column mass x largest row mass), which is the
   area / box area of each drawn shape: 1 for the square, π/4 for the circle, 1/2 for the triangle. Blur moves
   coverage across edges without changing these integrals, so they barely move (noise averages out of them too).
   Shape: an upright triangle's mass piles up towards its base (skewness -2√2/5 ≈ -0.57, against 0 for the
   symmetric shapes; still below -0.2 for a small triangle at 32 px blurred with σ = 1 px), so a skewness below
   TRIANGLE_SKEW is a triangle. Otherwise the fill ratio tells the square from the circle, split at SQUARE_FILL:
   above the halfway 0.89 because blur raises a circle's fill (its central column mass drops by about σ²/r)
   while a square's stays 1; a small circle at 32 px blurred with σ = 0.8 px stays below 0.9, a square above 0.92.
   Size: the half-extent r of a shape of that kind with that area (area = 4r² x its fill ratio), small or large
   split halfway between SIZES. Position: the 3 x 3 grid cell of the centroid.

`score` compares the blobs with what the caption states. Extra blobs do not fail a caption: a one-object caption
is judged on the largest blob, a two-object caption on the two largest; "count" (exactly as many blobs as
objects stated) is reported on its own and is not part of "all".
"""

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import UsageError
from .world import COLORS, HELD_OUT, PALETTE, SIZES, ObjectSpec, cell_of, image_to_tensor, parse_caption, relation_holds

MIN_BACKGROUND = 0.75 * 255  # white balance never scales a channel up by more than 1 / 0.75
MIN_COVERAGE = 0.5  # least mixture weight α of a palette colour over white for an object pixel
MAX_RESIDUAL = 60.0  # largest RGB distance (0-255 scale) from a colour's line of white mixtures
MERGE_GAP = 0.03  # same-colour pieces at most this far apart (fraction of the side) are one object
MIN_AREA = min(SIZES.values()) ** 2 * 2 / 4  # a quarter of a small triangle's area (2r²), fraction of the image
PAD = 2  # pixels around an object's box whose partial coverage counts towards it
ALPHA_FLOOR = 0.15  # coverage below this is noise on the background, not part of an object
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # area / box area of each drawn shape
TRIANGLE_SKEW = -0.15  # vertical skewness below this is a triangle (see the module docstring)
SQUARE_FILL = 0.91  # fill ratio above this is a square, below a circle (see the module docstring)
LARGE_HALF_EXTENT = sum(SIZES.values()) / 2  # midpoint between the small and the large half-extent
ROW_SEEN, ROW_HELD_OUT, ROW_TWO, ROW_VARY = ("one object, seen pairs", "one object, held-out pairs", "two objects",
                                             "vary")
ROWS = (ROW_SEEN, ROW_HELD_OUT, ROW_TWO, ROW_VARY)
COLUMNS = ("count", "color", "shape", "size", "position", "binding", "relation", "all")


@dataclass(frozen=True)
class Blob:
    """One detected object: its attributes, and the measurements they were read from. `center` (x, y) and `area`
    are fractions of the image side / area; `box` (x0, y0, x1, y1) are the inclusive pixel bounds of its pixels."""

    color: str
    shape: str
    size: str
    position: str
    center: tuple[float, float]
    area: float
    fill: float
    skew: float
    box: tuple[int, int, int, int]


def _rgb(image: Image.Image | Tensor) -> Tensor:
    """A PIL image, a uint8 (3, H, W) tensor or a float (3, H, W) tensor in [0, 1] as float (3, H, W) in [0, 255],
    white-balanced: each channel is scaled so that the background (the per-channel median, as objects cover well
    under half of the image) becomes 255. A generated image's background is often a little off-white or tinted,
    and an unbalanced one would read as faint colour all around each object."""
    if isinstance(image, Image.Image):
        image = image_to_tensor(image)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise UsageError("detect expects a PIL image or a (3, H, W) tensor")
    rgb = image.float() if image.dtype == torch.uint8 else image.detach().float().cpu().clamp(0, 1) * 255
    background = rgb.flatten(1).median(dim=1).values.clamp(min=MIN_BACKGROUND)  # (3,)
    return rgb * (255 / background)[:, None, None]


def _mixtures(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Step 1: (3, H, W) RGB in [0, 255] -> coverage α of every palette colour (C, H, W) and the (H, W) palette index
    of each object pixel, -1 elsewhere."""
    offsets = rgb.flatten(1) - 255  # (3, H*W), pixel minus white
    lines = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32) - 255  # (C, 3), colour minus white
    norms = (lines * lines).sum(1, keepdim=True)  # (C, 1)
    dots = lines @ offsets  # (C, H*W)
    alpha = (dots / norms).clamp(0, 1)  # best mixture weight per colour
    residual = (offsets * offsets).sum(0) - 2 * alpha * dots + alpha * alpha * norms  # (C, H*W) squared distance
    # Reductions over the few colours are folds of elementwise ops: a parallel reduction kernel costs milliseconds
    # per call when the CPU is oversubscribed, these stay microseconds.
    smallest = functools.reduce(torch.minimum, residual)  # (H*W,)
    nearest = residual == smallest  # (C, H*W), one-hot but for exact ties
    best = functools.reduce(torch.maximum, nearest * torch.arange(len(COLORS))[:, None])  # (H*W,)
    keep = (functools.reduce(torch.maximum, alpha * nearest) >= MIN_COVERAGE) & (smallest <= MAX_RESIDUAL ** 2)
    return alpha.view(len(COLORS), *rgb.shape[1:]), torch.where(keep, best, -1).view(rgb.shape[1:])


def _max3x3(x: Tensor) -> Tensor:
    """The maximum over each pixel's 3 x 3 neighbourhood of a (K, H, W) tensor (zero outside)."""
    padded = F.pad(x, (1, 1, 1, 1))  # (K, H+2, W+2)
    rows = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])  # (K, H, W+2)
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])  # (K, H, W)


def _components(labels: Tensor) -> Tensor:
    """Step 2: (H, W) palette indices -> (H, W) component ids 1..count (0 where no object).

    Each object pixel starts with its own number and repeatedly takes the largest number among its same-colour
    3 x 3 neighbours, until nothing changes: then every component holds the number of one of its pixels. Those
    numbers are finally renumbered 1..count.
    """
    height, width = labels.shape
    present = torch.bincount(labels.view(-1) + 1, minlength=len(COLORS) + 1)[1:].nonzero()[:, 0]  # (K,) colours
    masks = labels[None] == present[:, None, None]  # (K, H, W)
    ids = torch.where(masks, torch.arange(1, height * width + 1, dtype=torch.int32).view(height, width), 0)
    while True:
        grown = torch.where(masks, _max3x3(ids), 0)
        if torch.equal(grown, ids):
            break
        ids = grown
    numbers = functools.reduce(torch.maximum, ids, torch.zeros(height, width, dtype=torch.int32)).view(-1).long()
    used = torch.bincount(numbers, minlength=height * width + 1) > 0  # (H*W+1,)
    used[0] = False
    renumber = used.cumsum(0) * used  # pixel number -> component id
    return renumber.index_select(0, numbers).view(height, width)


def _regions(ids: Tensor, count: int, labels: Tensor) -> tuple[list[int], list[list[int]], list[int]]:
    """Pixel count, inclusive box [x0, y0, x1, y1] and palette index of regions 1..count of an (H, W) id map."""
    flat = ids.view(-1)
    where = flat.nonzero()[:, 0]
    index = flat.index_select(0, where) - 1
    ys, xs, colors = where // ids.shape[1], where % ids.shape[1], labels.view(-1).index_select(0, where)
    area = torch.bincount(index, minlength=count)
    stats = torch.zeros(5, count, dtype=torch.long)  # x0, y0, x1, y1, colour
    for j, (values, reduce) in enumerate(((xs, "amin"), (ys, "amin"), (xs, "amax"), (ys, "amax"), (colors, "amax"))):
        stats[j].scatter_reduce_(0, index, values, reduce, include_self=False)
    return area.tolist(), stats[:4].T.tolist(), stats[4].tolist()


def _merge(colors: list[int], b: list[list[int]], max_gap: int) -> list[int]:
    """Step 3: the group (0-based) of each component: same-colour components with boxes at most `max_gap` empty
    pixels apart are joined, transitively (union-find)."""
    parent = list(range(len(colors)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(colors)), 2):
        gap = max(b[j][0] - b[i][2], b[i][0] - b[j][2], b[j][1] - b[i][3], b[i][1] - b[j][3]) - 1
        if colors[i] == colors[j] and gap <= max_gap:
            parent[root(j)] = root(i)
    roots = sorted({root(i) for i in range(len(colors))})
    return [roots.index(root(i)) for i in range(len(colors))]


def _measure(alpha: Tensor) -> tuple[float, float, float, float, float]:
    """Area, fill ratio, centroid (x, y) in pixels and vertical skewness of one object's (h, w) coverage."""
    area = alpha.sum()
    ys, xs = (torch.arange(n, dtype=torch.float32) + 0.5 for n in alpha.shape)
    columns, rows = alpha.sum(0), alpha.sum(1)  # (w,), (h,) mass profiles
    cx, cy = (columns @ xs) / area, (rows @ ys) / area
    skew = (rows @ (ys - cy) ** 3 / area) / (rows @ (ys - cy) ** 2 / area) ** 1.5
    fill = area / (columns.amax() * rows.amax())
    return area.item(), fill.item(), cx.item(), cy.item(), skew.item()


def _blob(color: int, alpha: Tensor, origin: tuple[int, int], image_size: tuple[int, int],
          box: tuple[int, int, int, int]) -> Blob:
    """Step 4: read the attributes of the object of palette colour `color` whose (h, w) coverage `alpha` is cut
    from an image of (height, width) `image_size` at pixel (x, y) `origin`."""
    height, width = image_size
    area, fill, cx, cy, skew = _measure(alpha)
    shape = "triangle" if skew < TRIANGLE_SKEW else "square" if fill > SQUARE_FILL else "circle"
    area /= height * width
    half_extent = math.sqrt(area / FILL[shape]) / 2
    center = ((origin[0] + cx) / width, (origin[1] + cy) / height)
    return Blob(COLORS[color], shape, "large" if half_extent > LARGE_HALF_EXTENT else "small", cell_of(center),
                center, area, fill, skew, box)


def detect(image: Image.Image | Tensor) -> list[Blob]:
    """The objects in a shapes-world image (a PIL image, a uint8 (3, H, W) tensor or a float one in [0, 1]),
    largest first; see the module docstring for the method."""
    rgb = _rgb(image)
    height, width = rgb.shape[1:]
    alpha, labels = _mixtures(rgb)
    components = _components(labels)
    count = int(components.max())
    if count == 0:
        return []
    _, boxes, colors = _regions(components, count, labels)
    merged = torch.tensor([0] + [g + 1 for g in _merge(colors, boxes, round(MERGE_GAP * max(height, width)))])
    groups = merged.index_select(0, components.view(-1)).view(height, width)  # (H, W) object ids, 0 = none
    pixels, boxes, colors = _regions(groups, int(merged.max()), labels)
    blobs = []
    for g, (box, color) in enumerate(zip(boxes, colors)):
        if pixels[g] < MIN_AREA * height * width:
            continue
        x0, y0 = max(0, box[0] - PAD), max(0, box[1] - PAD)
        x1, y1 = min(width, box[2] + 1 + PAD), min(height, box[3] + 1 + PAD)
        coverage = alpha[color, y0:y1, x0:x1]
        mine = (groups[y0:y1, x0:x1] == g + 1) | (labels[y0:y1, x0:x1] < 0)  # its pixels and the background's
        coverage = torch.where(mine & (coverage >= ALPHA_FLOOR), coverage, 0)
        coverage = coverage / coverage.max()
        blobs.append(_blob(color, coverage, (x0, y0), (height, width), tuple(box)))
    return sorted(blobs, key=lambda blob: -blob.area)


def _judge_one(wanted: ObjectSpec, blobs: list[Blob]) -> dict[str, bool]:
    """The stated attributes of a one-object caption, judged on the largest blob."""
    stated = {"color": wanted.color, "shape": wanted.shape, "size": wanted.size, "position": wanted.position}
    return {key: bool(blobs) and getattr(blobs[0], key) == value for key, value in stated.items() if value is not None}


def _judge_two(objects: tuple[ObjectSpec, ...], relation: str, blobs: list[Blob]) -> dict[str, bool]:
    """The colours, shapes, binding and relation of a two-object caption, judged on the two largest blobs."""
    if len(blobs) < 2:
        return dict.fromkeys(("color", "shape", "binding", "relation"), False)
    pair = blobs[:2]

    def match(order: list[Blob]) -> list[int]:  # per object: 2 if the colour matches, +1 if the shape does
        return [2 * (blob.color == obj.color) + (blob.shape == obj.shape) for blob, obj in zip(order, objects)]

    forward, backward = sum(match(pair)), sum(match(pair[::-1]))
    first, second = pair if forward >= backward else pair[::-1]
    identified = forward != backward and min(match([first, second])) > 0  # unique, and each blob by something
    return {
        "color": sorted(b.color for b in pair) == sorted(o.color for o in objects),
        "shape": sorted(b.shape for b in pair) == sorted(o.shape for o in objects),
        "binding": min(match([first, second])) == 3,
        "relation": identified and relation_holds(first.center, second.center, relation),
    }


def score(caption: str, image: Image.Image | Tensor, *, row: str | None = None) -> dict[str, bool | str]:
    """Judge whether `image` shows what `caption` states: a boolean per stated attribute, "all", "count", "row".

    One object (judged on the largest blob): "color", "shape", and "size" / "position" when the caption states
    them. Two objects (judged on the two largest blobs): "color" and "shape" (the blobs have the stated colours and
    the stated shapes, as multisets), "binding" (each stated colour sits on its stated shape) and "relation" (the
    blob matched to the first object stands in the stated relation to the other). Blobs are matched to objects by
    colour first, then shape; when that matching is a tie, or a blob shares nothing with its object, the relation
    cannot be read and counts as false. Missing blobs fail everything. "all" is the conjunction of these; "count"
    (exactly as many blobs as stated objects) is reported on its own, outside "all". "row" is the benchmark row:
    the caption's own (ROW_SEEN, ROW_HELD_OUT, ROW_TWO) unless `row` names another (ROW_VARY).
    """
    spec = parse_caption(caption)
    blobs = detect(image)
    if spec.relation is None:
        judged = _judge_one(spec.objects[0], blobs)
    else:
        judged = _judge_two(spec.objects, spec.relation, blobs)
    if row is None:
        pair = (spec.objects[0].color, spec.objects[0].shape)
        row = ROW_TWO if spec.relation else ROW_HELD_OUT if pair in HELD_OUT else ROW_SEEN
    return {"row": row, **judged, "all": all(judged.values()), "count": len(blobs) == len(spec.objects)}


def summarize(scores: list[dict[str, bool | str]]) -> list[dict[str, str | int | float | None]]:
    """The benchmark table: one row per distinct "row" of `scores` (in ROWS order, any others after, in order of
    appearance) with "row", "n" and, for each of COLUMNS, the fraction of true among the scores of that row that
    judge it (None when none does)."""
    present = dict.fromkeys(s["row"] for s in scores)
    table: list[dict[str, str | int | float | None]] = []
    for name in [r for r in ROWS if r in present] + [r for r in present if r not in ROWS]:
        members = [s for s in scores if s["row"] == name]
        table.append({"row": name, "n": len(members)})
        for column in COLUMNS:
            values = [bool(s[column]) for s in members if column in s]
            table[-1][column] = sum(values) / len(values) if values else None
    return table
