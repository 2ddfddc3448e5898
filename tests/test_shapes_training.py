"""The `shapes` training recipe: its data (the counterfactual twins that teach CLIP what in-batch negatives do not)
and a whole run of it, a few steps per stage, into a model folder that loads like the shipped one."""

import json
import random
from collections import Counter
from dataclasses import fields
from pathlib import Path

import torch

from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings
from dalle_cli import load
from dalle_cli.shapes.evaluate import score
from dalle_cli.shapes.world import HELD_OUT, CaptionSpec, ObjectSpec, parse_caption, sample_scene
from recipes.shapes import train
from recipes.shapes.train_data import OPPOSITE, hard_negative, sample_contrast_batch


def changed(caption: CaptionSpec, negative: CaptionSpec) -> list[str]:
    """The attributes in which `negative` differs from `caption`: object fields by name, or for two objects
    "relation", "binding" or "shape of one of two"."""
    if caption.relation is not None:
        a, b = caption.objects
        if negative == CaptionSpec(caption.objects, OPPOSITE[caption.relation]):
            return ["relation"]
        if negative == CaptionSpec((ObjectSpec(b.color, a.shape), ObjectSpec(a.color, b.shape)), caption.relation):
            return ["binding"]
        c, d = negative.objects
        if negative.relation == caption.relation and (c.color, d.color) == (a.color, b.color):
            return ["shape of one of two"] if (c.shape != a.shape) != (d.shape != b.shape) else ["something else"]
        return ["something else"]
    [before], [after] = caption.objects, negative.objects
    return [f.name for f in fields(ObjectSpec) if getattr(before, f.name) != getattr(after, f.name)]


def test_hard_negatives_contradict_one_stated_attribute() -> None:
    """Every negative is a caption of the grammar that differs in exactly one attribute the caption states (so it
    is false of the caption's image) and names no held-out pair (it is rendered as a twin); every kind of
    contradiction occurs, and a stated position is always the one moved, since in-batch negatives almost never
    differ in position alone."""
    rng = random.Random(0)
    kinds: Counter[str] = Counter()
    positioned: Counter[str] = Counter()
    for _ in range(3000):
        caption, _ = sample_scene(rng, kind="mix")
        spec = parse_caption(caption)
        negative = parse_caption(hard_negative(rng, caption))
        differences = changed(spec, negative)
        assert len(differences) == 1, (caption, negative)
        [kind] = differences
        assert kind != "something else"
        assert not any((o.color, o.shape) in HELD_OUT for o in negative.objects)
        if kind in ("size", "position"):
            assert getattr(spec.objects[0], kind) is not None, (caption, negative)  # never contradicts the unstated
            assert getattr(negative.objects[0], kind) is not None
        kinds[kind] += 1
        if spec.relation is None and spec.objects[0].position is not None:
            positioned[kind] += 1
    assert set(kinds) == {"color", "shape", "size", "position", "relation", "binding", "shape of one of two"}
    assert set(positioned) == {"position"} and positioned["position"] > 300


def test_contrast_batches_pair_each_scene_with_a_true_twin() -> None:
    """The second half of a contrast batch is the hard negatives of the first half's captions; by the evaluator every
    image, twins included, follows its own caption, and no original follows its twin's."""
    batch = sample_contrast_batch(random.Random(1), 64)
    half = len(batch.captions) // 2
    assert batch.images.shape == (64, 3, 64, 64)
    for caption, twin in zip(batch.captions[:half], batch.captions[half:]):
        assert len(changed(parse_caption(caption), parse_caption(twin))) == 1
    pixels = ((batch.images + 1) * 127.5).round().to(torch.uint8)
    assert all(score(caption, image)["all"] for caption, image in zip(batch.captions, pixels))
    assert not any(score(twin, image)["all"] for twin, image in zip(batch.captions[half:], pixels[:half]))


def test_recipe_writes_the_shipped_layout_and_records_a_replay(tmp_path: Path) -> None:
    """Two steps per stage: every file the shipped model has is written (dalle.json, the folder's own sampling
    defaults, among them), `recipe.json` records the steps taken as a replay line, and the folder loads through the
    normal loader and generates."""
    out = tmp_path / "shapes"
    assert train.main(["--out", str(out), "--seed", "3", "--steps", "2,2,2,2", "--minutes", "60"]) == 0
    shipped = Path(__file__).resolve().parent.parent / "weights" / "shapes"
    assert {p.relative_to(out) for p in out.rglob("*")} == {p.relative_to(shipped) for p in shipped.rglob("*")}
    settings = (out / "dalle.json").read_text(encoding="utf-8")
    assert settings == (shipped / "dalle.json").read_text(encoding="utf-8")
    assert json.loads(settings)["family"] == "unclip"
    assert json.loads(settings)["defaults"] == {"prior_steps": 15, "decoder_steps": 15, "sr_steps": 7,
                                                "prior_guidance": 2.0, "decoder_guidance": 2.0, "noise_candidates": 4}
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["steps"] == dict.fromkeys(train.STAGES, 2)
    assert recipe["replay"] == "--seed 3 --steps 2,2,2,2 --minutes 10000"
    model = load(out, device="cpu")
    [image] = model.generate(["a red circle in the top left"], [0], Settings(prior_steps=2, decoder_steps=2,
                                                                              sr_steps=2))
    assert image.size == (64, 64)
