"""How well edits (`Model.edit`: RePaint with a mask, SDEdit without) work on the embedded `shapes` model.

    python benchmarks/shapes_edits.py [--n 100] [--seed 2031] [--batch 25] [--resamples R ...]
        [--strengths 0.5 0.75] [--margin 3] [--tolerance 0.05] [--model shapes] [--sections 1 2] [--save DIR]
    python benchmarks/shapes_edits.py --tune [--n 40] [--seed 1033]

The report draws `--n` two-object captions (`sample_scene(kind="two")`, seen pairs) from `--seed` and generates
them at the model's defaults, one seed per image (seed x 10000 + i), in batches of `--batch`. It keeps the images
in which the model-free evaluator (dalle_cli/shapes/evaluate.py) finds exactly two blobs and judges the caption
right (`score(caption, image)["all"]`: colours, shapes, binding, relation), and prints how many it kept. Each
caption object is then the kept image's blob of its colour (the two colours always differ). Edits use seeds
seed x 10000 + 5000 + k (masked) and + 6000 + k (image to image) for the k-th kept image, the same in every row,
and their captions are drawn from the same random stream after the scene captions, in canonical wording.

1. Masked edits (RePaint). Of kept image k the object k mod 2 (first, second, first, ...) is masked: a greyscale
   "L" mask, white = repaint, at the image's size, covering the *detected* blob's pixel box (`Blob.box`, inclusive
   bounds of its pixels) grown by `--margin` px per 64 px of image side (3 px at 64 px), clipped to the image. The
   edit caption replaces that object's colour and shape, both, by a seen pair (not in HELD_OUT) whose colour also
   differs from the other object's; the other object and the relation stay. Per edit, on the edited picture:
   - "new right": a detected blob of the new colour and the new shape whose pixel box lies wholly in the mask (as
     the edit sees it: `masks.fit_mask`);
   - "other kept": a blob with the other object's colour, shape, size and 3x3 cell as detected before the edit;
   - "no strays": exactly two blobs detected;
   - "all three": the three above together;
   - "outside ok": max |edited - input| over the pixels outside the mask <= 2/255, the input being the picture as
     the edit sees it (`images.fit` to the edit size, mapped to [0, 255]); "max out" is the largest such
     difference over all edits, in 1/255;
   - "score": `score(edit caption, edited)["all"]`.
   One row per RePaint resampling count R in `--resamples` (default: the model's `settings.resample`).
2. Image to image (SDEdit). The same kept images, the caption with both colours replaced, each by a colour that
   is in neither object (so a picture left as it was can never pass), the two new colours different, the shapes
   and the relation kept, both pairs seen; `model.edit` with no mask at `settings.strength` = s for each s in
   `--strengths`. Per edit:
   - "color": the two largest blobs have the two new colours (`score(caption, out)["color"]`);
   - "layout": for each input object a distinct output blob of the same shape whose centroid is within
     `--tolerance` (fraction of the side, 0.05 = 3.2 px at 64 px) of the object's detected centroid (stray blobs
     allowed);
   - "both": color and layout; "bound": layout with each matched blob in its own object's new colour;
   - "two blobs": exactly two blobs detected; "score": `score(caption, out)["all"]`.
`--tune` runs on other seeds (its own `--seed` default, `--n` 40) with R = 1, 2, 4 and strengths 0.25, 0.375,
0.5, 0.625, 0.75, 1.0. Prints one table per section with n, the rates (%), the targets and the seconds per edit,
then the total time. Everything is deterministic from the seeds. `--save DIR` writes the first few edits of each
row and its first few failures ("all three", "both") as PNGs (input | mask | output, 4x nearest) with their
captions and verdicts in DIR/captions.txt.
"""

import argparse
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from shapes_manipulations import batched, percent, table

from dalle_cli import load
from dalle_cli.images import fit
from dalle_cli.masks import fit_mask, read_mask
from dalle_cli.shapes.evaluate import Blob, detect, score
from dalle_cli.shapes.world import COLORS, HELD_OUT, SHAPES, CaptionSpec, ObjectSpec, image_to_tensor, parse_caption, \
    sample_scene

REPORT_SEED, TUNE_SEED = 2031, 1033
TUNE_RESAMPLES, TUNE_STRENGTHS = (1, 2, 4), (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
REPORT_STRENGTHS = (0.5, 0.75)
OUTSIDE_LIMIT = 2.0  # in 1/255
TARGET_MASKED = "new right ≥ 70 %, other kept ≥ 95 %, no strays, outside ok in 100 %"
TARGET_IMG2IMG = "maximise both (color and layout)"
SAVE_PER_ROW = 4


def seen(color: str, shape: str) -> bool:
    return (color, shape) not in HELD_OUT


def by_color(blobs: list[Blob], spec: CaptionSpec) -> list[Blob]:
    """The blob of each caption object, matched by colour (a kept image has one blob of each stated colour)."""
    return [next(b for b in blobs if b.color == o.color) for o in spec.objects]


def mask_for(blob: Blob, size: tuple[int, int], margin: float) -> Image.Image:
    """A "L" mask of the image's size, white over the blob's pixel box grown by `margin` px per 64 px of side."""
    width, height = size
    grow = round(margin * max(width, height) / 64)
    x0, y0, x1, y1 = blob.box
    mask = Image.new("L", size, 0)
    mask.paste(255, (max(0, x0 - grow), max(0, y0 - grow), min(width, x1 + 1 + grow), min(height, y1 + 1 + grow)))
    return mask


def masked_caption(rng: random.Random, spec: CaptionSpec, which: int) -> CaptionSpec:
    """The caption with object `which` given another colour and another shape (a seen pair, its colour not the
    other object's)."""
    old, other = spec.objects[which], spec.objects[1 - which]
    pairs = [(c, s) for c in COLORS for s in SHAPES
             if c not in (old.color, other.color) and s != old.shape and seen(c, s)]
    objects = list(spec.objects)
    objects[which] = ObjectSpec(*rng.choice(pairs))
    return CaptionSpec(tuple(objects), spec.relation)


def recoloured_caption(rng: random.Random, spec: CaptionSpec) -> CaptionSpec:
    """The caption with both colours replaced by colours in neither object, the two different, pairs seen."""
    a, b = spec.objects
    fresh = [c for c in COLORS if c not in (a.color, b.color)]
    pairs = [(x, y) for x in fresh for y in fresh if x != y and seen(x, a.shape) and seen(y, b.shape)]
    x, y = rng.choice(pairs)
    return CaptionSpec((ObjectSpec(x, a.shape), ObjectSpec(y, b.shape)), spec.relation)


def pixels_255(image: Image.Image) -> torch.Tensor:
    return image_to_tensor(image).float()  # (3, H, W) in [0, 255]


def save_examples(directory: Path | None, label: str, items: list[tuple[Image.Image, Image.Image | None,
                                                                        Image.Image, str, str]],
                  passed: Sequence[bool]) -> None:
    """The first SAVE_PER_ROW edits and the first SAVE_PER_ROW failing ones: input | mask | output side by side
    (4x nearest), each edit's captions and verdict in captions.txt."""
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    failing = [k for k, ok in enumerate(passed) if not ok][:SAVE_PER_ROW]
    with open(directory / "captions.txt", "a") as notes:
        for k in sorted(set(range(min(SAVE_PER_ROW, len(items)))) | set(failing)):
            image, mask, out, caption, verdict = items[k]
            panels = [image, *([mask.convert("RGB")] if mask is not None else []), out]
            w, h = image.size
            strip = Image.new("RGB", (w * len(panels), h), (128, 128, 128))
            for j, panel in enumerate(panels):
                strip.paste(panel.convert("RGB").resize((w, h)), (w * j, 0))
            name = f"{label}_{k}{'_fail' if k in failing else ''}.png"
            strip.resize((strip.width * 4, strip.height * 4), Image.Resampling.NEAREST).save(directory / name)
            notes.write(f"{name}: {caption} | {verdict}\n")


def masked_edits(model, s, images: list[Image.Image], specs: list[CaptionSpec], blobs: list[list[Blob]],
                 rng: random.Random, seed: int, batch: int, margin: float, resamples: Sequence[int],
                 save: Path | None) -> list[list[object]]:
    """Section 1: one row per resampling count R, the same images, masks, captions and seeds each time."""
    width, height = model.edit_size(s)
    whiches = [k % 2 for k in range(len(images))]
    olds = [by_color(b, spec) for b, spec in zip(blobs, specs)]
    masks = [mask_for(old[w], im.size, margin) for old, w, im in zip(olds, whiches, images)]
    captions = [masked_caption(rng, spec, w) for spec, w in zip(specs, whiches)]
    seeds = [seed * 10_000 + 5_000 + k for k in range(len(images))]
    inputs = [(fit([im], width, height)[0] + 1) * 127.5 for im in images]  # the picture as the edit sees it, 0-255
    repaint = [fit_mask(read_mask(m), im.size, width, height)[0, 0].bool() for m, im in zip(masks, images)]
    rows = []
    for r in resamples:
        settings = s.updated({"resample": r}, "--resamples")
        start = time.perf_counter()
        outs = batched(list(range(len(images))), batch, lambda c, i: model.edit(
            [images[k] for k in c], [captions[k].text() for k in c], [seeds[k] for k in c], settings,
            masks=[masks[k] for k in c]))
        seconds = time.perf_counter() - start
        new, other, strays, outside, scores, worst, examples = [], [], [], [], [], 0.0, []
        for k, out in enumerate(outs):
            found, w = detect(out), whiches[k]
            target, kept = captions[k].objects[w], olds[k][1 - w]
            inside = repaint[k]
            new.append(any(b.color == target.color and b.shape == target.shape
                           and bool(inside[b.box[1]:b.box[3] + 1, b.box[0]:b.box[2] + 1].all()) for b in found))
            other.append(any((b.color, b.shape, b.size, b.position) == (kept.color, kept.shape, kept.size,
                                                                         kept.position) for b in found))
            strays.append(len(found) == 2)
            difference = (pixels_255(out) - inputs[k]).abs().amax(0)[~inside]
            biggest = float(difference.max()) if difference.numel() else 0.0
            worst = max(worst, biggest)
            outside.append(biggest <= OUTSIDE_LIMIT)
            scores.append(bool(score(captions[k].text(), out)["all"]))
            verdict = (f"from {specs[k].text()!r}; new {'ok' if new[-1] else 'WRONG'}, other "
                       f"{'kept' if other[-1] else 'CHANGED'}, {len(found)} blobs: "
                       + ", ".join(f"{b.color} {b.shape} {b.size} {b.position}" for b in found))
            examples.append((images[k], masks[k], out, captions[k].text(), verdict))
        every = [all(x) for x in zip(new, other, strays)]
        meets = (float(percent(new)) >= 70 and float(percent(other)) >= 95 and all(outside))
        rows.append([r, len(outs), percent(new), percent(other), percent(strays), percent(every), percent(outside),
                     f"{worst:.2f}", percent(scores), f"{seconds / len(outs):.2f}", "yes" if meets else ""])
        save_examples(save, f"repaint_R{r}", examples, every)
    return rows


def layout_match(objects: list[Blob], found: list[Blob], tolerance: float) -> list[Blob] | None:
    """For each input object a distinct blob of its shape within `tolerance` of its centroid, else None."""
    for order in (found, found[::-1]):
        chosen: list[Blob] = []
        for obj in objects:
            near = [b for b in order if b not in chosen and b.shape == obj.shape
                    and max(abs(b.center[0] - obj.center[0]), abs(b.center[1] - obj.center[1])) <= tolerance]
            if not near:
                break
            chosen.append(min(near, key=lambda b: (b.center[0] - obj.center[0]) ** 2
                              + (b.center[1] - obj.center[1]) ** 2))
        if len(chosen) == len(objects):
            return chosen
    return None


def image_to_image(model, s, images: list[Image.Image], specs: list[CaptionSpec], blobs: list[list[Blob]],
                   rng: random.Random, seed: int, batch: int, strengths: Sequence[float], tolerance: float,
                   save: Path | None) -> list[list[object]]:
    """Section 2: one row per strength, the same images, captions and seeds each time."""
    captions = [recoloured_caption(rng, spec) for spec in specs]
    olds = [by_color(b, spec) for b, spec in zip(blobs, specs)]
    seeds = [seed * 10_000 + 6_000 + k for k in range(len(images))]
    rows = []
    for strength in strengths:
        settings = s.updated({"strength": strength}, "bench")
        start = time.perf_counter()
        outs = batched(list(range(len(images))), batch, lambda c, i: model.edit(
            [images[k] for k in c], [captions[k].text() for k in c], [seeds[k] for k in c], settings))
        seconds = time.perf_counter() - start
        color, layout, bound, two, scores, examples = [], [], [], [], [], []
        for k, out in enumerate(outs):
            found, judged = detect(out), score(captions[k].text(), out)
            matched = layout_match(olds[k], found, tolerance)
            color.append(bool(judged["color"]))
            layout.append(matched is not None)
            bound.append(matched is not None and all(b.color == o.color for b, o in zip(matched, captions[k].objects)))
            two.append(len(found) == 2)
            scores.append(bool(judged["all"]))
            verdict = (f"from {specs[k].text()!r}; color {'ok' if color[-1] else 'WRONG'}, layout "
                       f"{'kept' if layout[-1] else 'CHANGED'}, {len(found)} blobs: "
                       + ", ".join(f"{b.color} {b.shape} {b.size} {b.position}" for b in found))
            examples.append((images[k], None, out, captions[k].text(), verdict))
        both = [c and x for c, x in zip(color, layout)]
        rows.append([f"{strength:g}", len(outs), percent(color), percent(layout), percent(both), percent(bound),
                     percent(two), percent(scores), f"{seconds / len(outs):.2f}"])
        save_examples(save, f"img2img_s{strength:g}", examples, both)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="captions drawn: 100, or 40 with --tune")
    parser.add_argument("--seed", type=int, default=None, help=f"{REPORT_SEED}, or {TUNE_SEED} with --tune")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--resamples", type=int, nargs="+", default=None,
                        help=f"RePaint resamplings R (default: the model's; {TUNE_RESAMPLES} with --tune)")
    parser.add_argument("--strengths", type=float, nargs="+", default=None,
                        help=f"image-to-image strengths (default {REPORT_STRENGTHS}; {TUNE_STRENGTHS} with --tune)")
    parser.add_argument("--margin", type=float, default=3.0, help="mask margin around the box, px per 64 px")
    parser.add_argument("--tolerance", type=float, default=0.05, help="layout: centroid shift, fraction of side")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2], help="the sections to run")
    parser.add_argument("--save", type=Path, default=None, help="write a few edits of each row here as PNGs")
    parser.add_argument("--tune", action="store_true", help="run the tuning sweeps instead of the report")
    args = parser.parse_args()
    n = args.n or (40 if args.tune else 100)
    seed = args.seed if args.seed is not None else TUNE_SEED if args.tune else REPORT_SEED
    model = load(args.model, device="cpu")
    s = model.defaults
    resamples = args.resamples or (TUNE_RESAMPLES if args.tune else (s.resample,))
    strengths = args.strengths or (TUNE_STRENGTHS if args.tune else REPORT_STRENGTHS)
    rng = random.Random(seed)
    captions = [sample_scene(rng, kind="two")[0] for _ in range(n)]
    start = time.perf_counter()
    generated = batched(captions, args.batch, lambda c, i: model.generate(c, [seed * 10_000 + i + j
                                                                              for j in range(len(c))], s))
    images, specs, blobs = [], [], []
    for caption, image in zip(captions, generated):
        found = detect(image)
        if len(found) == 2 and score(caption, image)["all"]:
            images.append(image)
            specs.append(parse_caption(caption))
            blobs.append(found)
    print(f"{model.info.name}: seed {seed}, n {n}, {torch.get_num_threads()} threads, settings {s}; "
          f"{n} images generated in {time.perf_counter() - start:.0f} s; kept {len(images)} of {n} "
          f"({100 * len(images) / n:.1f} %: exactly two blobs and the caption's "
          f"\"all\"); edit size {model.edit_size(s)}")
    if not images:
        print("nothing kept: no edits to measure")
        return
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "captions.txt").write_text("")
    edit_rng = random.Random(seed * 10_000 + 8_000)  # the edit captions: the same for every row and section
    masked_rng, img2img_rng = random.Random(edit_rng.random()), random.Random(edit_rng.random())
    if 1 in args.sections:
        section = time.perf_counter()
        rows = masked_edits(model, s, images, specs, blobs, masked_rng, seed, args.batch, args.margin, resamples,
                            args.save)
        table(f"1. masked edits (RePaint), the box of one object + {args.margin:g} px per 64 px "
              f"(target: {TARGET_MASKED})",
              ["R", "n", "new right", "other kept", "no strays", "all three", "outside ok", "max out",
               "score", "s/edit", "meets"], rows, time.perf_counter() - section)
        if args.tune:
            best_new, best_other = max(float(r[2]) for r in rows), max(float(r[3]) for r in rows)
            near = [r[0] for r in rows if float(r[2]) >= best_new - 2 and float(r[3]) >= best_other - 2]
            print(f"smallest R within 2 points of the best new right ({best_new:.1f}) and other kept "
                  f"({best_other:.1f}): {near[0] if near else 'none'}")
    if 2 in args.sections:
        section = time.perf_counter()
        rows = image_to_image(model, s, images, specs, blobs, img2img_rng, seed, args.batch, strengths,
                              args.tolerance, args.save)
        table(f"2. image to image (SDEdit), both colours changed, layout within {args.tolerance:g} of the side "
              f"(target: {TARGET_IMG2IMG})",
              ["strength", "n", "color", "layout", "both", "bound", "two blobs", "score", "s/edit"], rows,
              time.perf_counter() - section)
        if args.tune:
            best = max(rows, key=lambda r: (float(r[4]), float(r[2]) + float(r[3])))
            print(f"strength with the most both (ties: color + layout): {best[0]}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
