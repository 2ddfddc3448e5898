"""The shapes world (grammar, sampler, renderer) and its model-free evaluator, checked against ground truth."""

import random

import pytest
import torch
import torch.nn.functional as F

from dalle_cli.errors import UsageError
from dalle_cli.shapes.evaluate import COLUMNS, ROW_HELD_OUT, ROW_SEEN, ROW_TWO, ROW_VARY, detect, score, summarize
from dalle_cli.shapes.world import (BORDER, COLORS, GAP, HELD_OUT, PALETTE, POSITIONS, PREFIXES, RELATION_WORDINGS,
                                    SHAPES, SIZES, CaptionSpec, ObjectSpec, Scene, SceneObject, cell_of, extents,
                                    image_to_tensor, parse_caption, relation_holds, render, render_batch, sample_scene,
                                    scene_for)

IMAGE_SIZES = (32, 64)
SCENES_PER_SIZE = 400


def judgements(scores: list[dict]) -> list[bool]:
    """Every attribute judgement of a list of `score` results ("all", "count" and "row" are not attributes)."""
    return [bool(v) for s in scores for k, v in s.items() if k not in ("row", "all", "count")]


def blur_and_noise(images: torch.Tensor, sigmas: list[float], noise: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, H, W) images, each blurred with a Gaussian of its own std in pixels, plus Gaussian noise of std
    `noise`, as float (N, 3, H, W) in [0, 1]: a stand-in for a model's soft, grainy output."""
    n, _, height, width = images.shape
    radius = round(3 * max(sigmas))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-offsets ** 2 / (2 * torch.tensor(sigmas)[:, None] ** 2))  # (N, 2r+1)
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(3, dim=0)[:, None, None, :]  # (3N, 1, 1, 2r+1)
    x = F.pad(images.float().view(1, 3 * n, height, width) / 255, (radius,) * 4, mode="replicate")
    x = F.conv2d(F.conv2d(x, taps, groups=3 * n), taps.transpose(2, 3), groups=3 * n).view(n, 3, height, width)
    return (x + noise * torch.randn(x.shape, generator=generator)).clamp(0, 1)


@pytest.fixture(scope="module")
def ground_truth() -> dict[int, list[tuple[str, Scene, torch.Tensor]]]:
    """SCENES_PER_SIZE random one- and two-object scenes (held-out pairs included) rendered at each image size."""
    data = {}
    for size in IMAGE_SIZES:
        rng = random.Random(size)
        scenes = [sample_scene(rng, allow_held_out=True) for _ in range(SCENES_PER_SIZE)]
        images = render_batch([scene for _, scene in scenes], size)
        data[size] = [(caption, scene, image) for (caption, scene), image in zip(scenes, images)]
    return data


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_evaluator_recovers_rendered_ground_truth(ground_truth, size: int) -> None:
    scores = [score(caption, image) for caption, _, image in ground_truth[size]]
    kinds = {len(parse_caption(caption).objects) for caption, _, _ in ground_truth[size]}
    assert kinds == {1, 2}
    for column in ("color", "shape", "size", "position", "binding", "relation"):
        assert any(column in s for s in scores), column
    marks = judgements(scores)
    accuracy = sum(marks) / len(marks)
    assert accuracy >= 0.99, f"{size} px: {accuracy:.4f} of {len(marks)} judgements right"
    assert sum(s["count"] for s in scores) / len(scores) >= 0.99


@pytest.mark.parametrize("size, sigmas", [(32, (0.4, 0.8)), (64, (0.8, 1.6))])
def test_evaluator_survives_blur_and_noise(ground_truth, size: int, sigmas: tuple[float, float]) -> None:
    """Blur of 1.25% to 2.5% of the image side and noise of std 0.04 (10 of 255) on every image."""
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    images = torch.stack([image for _, _, image in ground_truth[size]])
    blurred = blur_and_noise(images, [rng.uniform(*sigmas) for _ in images], 0.04, generator)
    scores = [score(caption, image) for (caption, _, _), image in zip(ground_truth[size], blurred)]
    marks = judgements(scores)
    accuracy = sum(marks) / len(marks)
    assert accuracy >= 0.95, f"{size} px degraded: {accuracy:.4f} of {len(marks)} judgements right"
    assert sum(s["all"] for s in scores) / len(scores) >= 0.95


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_evaluator_survives_washed_out_and_tinted_images(ground_truth, size: int) -> None:
    """Colours at 85% strength over white, a colour cast of up to 10% per channel, then blur and noise."""
    generator = torch.Generator().manual_seed(1)
    images = torch.stack([image for _, _, image in ground_truth[size][:200]])
    images = 255 - 0.85 * (255 - images.float())  # washed out
    images = images * (1 - 0.1 * torch.rand(len(images), 3, 1, 1, generator=generator))  # tinted
    degraded = blur_and_noise(images.round().to(torch.uint8), [size / 64] * len(images), 0.04, generator)
    scores = [score(caption, image) for (caption, _, _), image in zip(ground_truth[size], degraded)]
    marks = judgements(scores)
    assert sum(marks) / len(marks) >= 0.95, f"{size} px washed out: {sum(marks) / len(marks):.4f}"


def assert_scene_follows(spec: CaptionSpec, scene: Scene) -> None:
    """Stated attributes are drawn; objects stay inside the image; two-object scenes are unambiguous."""
    assert [(o.color, o.shape) for o in spec.objects] == [(o.color, o.shape) for o in scene.objects]
    boxes = []
    for stated, obj in zip(spec.objects, scene.objects):
        assert stated.size in (None, obj.size)
        assert stated.position in (None, cell_of(obj.center))
        left, up, right, down = extents(obj.shape, obj.size)
        box = (obj.center[0] - left, obj.center[1] - up, obj.center[0] + right, obj.center[1] + down)
        assert BORDER - 1e-9 <= min(box) and max(box) <= 1 - BORDER + 1e-9
        boxes.append(box)
    if spec.relation is not None:
        a, b = scene.objects
        assert a.color != b.color
        assert relation_holds(a.center, b.center, spec.relation)
        gap = max(boxes[1][0] - boxes[0][2], boxes[0][0] - boxes[1][2], boxes[1][1] - boxes[0][3],
                  boxes[0][1] - boxes[1][3])
        assert gap >= GAP - 1e-9


def test_sampled_scenes_follow_their_captions() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        caption, scene = sample_scene(rng, allow_held_out=True)
        assert_scene_follows(parse_caption(caption), scene)


def test_scenes_drawn_for_a_caption_follow_it() -> None:
    """`scene_for` draws a scene for any caption of the grammar, and fills in what it leaves unstated at random."""
    rng = random.Random(2)
    specs = [parse_caption(sample_scene(rng, allow_held_out=True)[0]) for _ in range(1000)]
    scenes = [scene_for(rng, spec) for spec in specs]
    for spec, scene in zip(specs, scenes):
        assert_scene_follows(spec, scene)
    unstated = [scene.objects[0] for spec, scene in zip(specs, scenes) if spec.objects[0].position is None]
    assert len({cell_of(obj.center) for obj in unstated}) == len(POSITIONS)
    assert {obj.size for obj in unstated} == set(SIZES)


def test_caption_parse_round_trips() -> None:
    rng = random.Random(2)
    wordings = set()
    for _ in range(1000):
        caption, _ = sample_scene(rng, allow_held_out=True)
        spec = parse_caption(caption)
        assert parse_caption(spec.text()) == spec
        assert parse_caption(caption.upper() + ".") == spec
        wordings.add(next((p for p in PREFIXES[1:] if caption.startswith(p)), ""))
        wordings.update(w for w in ("to the left of", "to the right of") if w in caption)
    assert wordings == {*PREFIXES, "to the left of", "to the right of"}  # every wording appears
    every = [ObjectSpec(c, s, z, p) for c in COLORS for s in SHAPES for z in (None, *SIZES) for p in (None, *POSITIONS)]
    for obj in every:
        assert parse_caption(CaptionSpec((obj,)).text()) == CaptionSpec((obj,))
    for relation, phrasings in RELATION_WORDINGS.items():
        spec = CaptionSpec((ObjectSpec("orange", "circle"), ObjectSpec("black", "triangle")), relation)
        for words in phrasings:
            assert parse_caption(f"An image of {spec.text(words)}") == spec
    assert CaptionSpec((ObjectSpec("orange", "square", "large", "top left"),)).text() == \
        "a large orange square in the top left"
    assert parse_caption("an orange square above a red circle").text() == "an orange square above a red circle"
    for bad in ("a cyan circle", "a red circle to the above of a blue square", "two red circles", "",
                "a small red circle left of a blue square", "a red circle in the middle"):
        with pytest.raises(UsageError):
            parse_caption(bad)


def test_held_out_pairs_only_when_allowed() -> None:
    rng = random.Random(3)
    seen = {(o.color, o.shape) for _ in range(3000) for o in sample_scene(rng)[1].objects}
    assert not seen & set(HELD_OUT)
    assert len(seen) == len(COLORS) * len(SHAPES) - len(HELD_OUT)
    singles = {(scene.objects[0].color, scene.objects[0].shape)
               for scene in (sample_scene(rng, kind="one", allow_held_out=True)[1] for _ in range(1000))}
    assert set(HELD_OUT) <= singles
    held = [sample_scene(rng, kind="one", held_out_only=True) for _ in range(200)]
    assert {(s.objects[0].color, s.objects[0].shape) for _, s in held} == set(HELD_OUT)
    assert {score(caption, render(scene))["row"] for caption, scene in held} == {ROW_HELD_OUT}
    assert len(HELD_OUT) >= 4 and all(c in PALETTE and s in SHAPES for c, s in HELD_OUT)
    with pytest.raises(UsageError):
        sample_scene(rng, kind="two", held_out_only=True)


def test_sampling_and_rendering_are_deterministic() -> None:
    first = [sample_scene(random.Random(7), kind=kind) for kind in ("one", "two", "mix")]
    again = [sample_scene(random.Random(7), kind=kind) for kind in ("one", "two", "mix")]
    assert first == again
    rng_a, rng_b = random.Random(11), random.Random(11)
    run_a = [sample_scene(rng_a) for _ in range(50)]
    run_b = [sample_scene(rng_b) for _ in range(50)]
    assert run_a == run_b
    assert run_a != [sample_scene(random.Random(12)) for _ in range(50)]
    scenes = [scene for _, scene in run_a]
    assert torch.equal(render_batch(scenes, 32), render_batch(scenes, 32))
    batch = render_batch(scenes, 64)
    assert batch.shape == (50, 3, 64, 64) and batch.dtype == torch.uint8
    assert torch.equal(batch[3], image_to_tensor(render(scenes[3], 64)))


def test_renderer_keeps_exact_colours_inside_shapes() -> None:
    for color in COLORS:
        for shape in SHAPES:
            image = image_to_tensor(render(Scene((SceneObject(color, shape, "large", (0.5, 0.5)),)), 64))
            assert image[:, 32, 32].tolist() == list(PALETTE[color])  # the centroid lies inside every shape
            assert image[:, 1, 1].tolist() == [255, 255, 255]


def test_wrong_images_score_false() -> None:
    red_square = render(Scene((SceneObject("red", "square", "large", (0.5, 0.5)),)), 64)
    assert score("a red square", red_square)["all"]
    wrong = score("a small blue circle in the top left", red_square)
    assert wrong == {"row": ROW_SEEN, "color": False, "shape": False, "size": False, "position": False,
                     "all": False, "count": True}
    # The binding failure unCLIP is known for: the right colours and shapes, swapped.
    swapped = render(Scene((SceneObject("red", "square", "small", (0.25, 0.5)),
                            SceneObject("blue", "circle", "small", (0.75, 0.5)))), 64)
    result = score("a red circle left of a blue square", swapped)
    assert (result["color"], result["shape"], result["binding"], result["relation"]) == (True, True, False, True)
    assert not result["all"]
    flipped = score("a red square right of a blue circle", swapped)
    assert (flipped["binding"], flipped["relation"], flipped["all"]) == (True, False, False)
    assert score("a blue circle right of a red square", swapped)["all"]
    assert score("a red square above a blue circle", swapped)["relation"] is False
    blank = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    assert detect(blank) == []
    assert score("a red square left of a blue circle", blank) == {
        "row": ROW_TWO, "color": False, "shape": False, "binding": False, "relation": False, "all": False,
        "count": False}


def test_extra_blobs_and_noise_specks() -> None:
    """A one-object caption is judged on the largest blob; a distractor only fails "count"; specks are ignored."""
    image = image_to_tensor(render(Scene((SceneObject("green", "circle", "large", (0.3, 0.3)),
                                          SceneObject("black", "triangle", "small", (0.75, 0.75)))), 64))
    result = score("a large green circle in the top left", image)
    assert result["all"] and not result["count"]
    image[:, 60, 5] = 0  # a one-pixel speck of black is noise, not an object
    blobs = detect(image)
    assert [(b.color, b.shape, b.size, b.position) for b in blobs] == [
        ("green", "circle", "large", "top left"), ("black", "triangle", "small", "bottom right")]


def test_summarize_groups_rows() -> None:
    scores = [
        {"row": ROW_TWO, "color": True, "shape": True, "binding": False, "relation": True, "all": False,
         "count": True},
        {"row": ROW_SEEN, "color": True, "shape": False, "size": True, "all": False, "count": True},
        {"row": ROW_SEEN, "color": True, "shape": True, "all": True, "count": False},
        {"row": ROW_VARY, "color": False, "shape": True, "all": False, "count": True},
    ]
    table = summarize(scores)
    assert [row["row"] for row in table] == [ROW_SEEN, ROW_TWO, ROW_VARY]
    seen = table[0]
    assert seen["n"] == 2 and seen["color"] == 1.0 and seen["shape"] == 0.5 and seen["size"] == 1.0
    assert seen["position"] is None and seen["binding"] is None and seen["all"] == 0.5 and seen["count"] == 0.5
    assert table[1]["binding"] == 0.0 and table[1]["relation"] == 1.0
    assert set(table[2]) == {"row", "n", *COLUMNS}

