"""How well the paper's manipulations (Ramesh et al. 2022, §3) work on the embedded `shapes` model.

    python benchmarks/shapes_manipulations.py [--n 100] [--seed 2039] [--batch 25] [--frames 5]
        [--thetas 0.25 0.5 0.55 0.75 1.0] [--guidances G ...] [--refine K] [--inversion-guidance G]
        [--noise fixed inverted] [--model shapes] [--sections 1 2 3 4]
    python benchmarks/shapes_manipulations.py --tune [--n 40] [--seed 1031]

The report draws `--n` one-object captions (seen pairs) from `--seed`, generates them, inverts them once (DDIM,
`INVERSION_REFINE` = `--refine` corrections per step, default the library's; at the model's inversion guidance, or
`--inversion-guidance`) and measures, judged by the model-free
evaluator (dalle_cli/shapes/evaluate.py) on the largest detected blob:
1. variations: decoding each inverted latent at η = 0, 0.5, 1 (what `vary(eta=η)` does, minus its re-inversion)
   and today's noise variation (`vary` without η): the rate at which colour, shape, size and position of the input
   are kept, and the PSNR against the input;
2. text diffs (`text_diff`) to "a {colour} {shape}" changing only the colour (to a seen pair), or only the shape,
   for each θ in `--thetas`, with the baseline "" and with the source's own "a {colour} {shape}" (`--from`), and
   for each decoder guidance in `--guidances` (decoding the latents inverted at the inversion guidance);
3. interpolations (`interpolate`, `--frames` frames) from each image to the next one of the draw that differs in
   colour and shape, with noise fixed (kept from each count of `--noise-candidates`) and inverted (`--noise`
   picks the rows): whether the end
   frames show their input's colour and shape,
   and whether the frames' CLIP image-embedding cosine to the first input never increases along the path, strictly
   and within `MONOTONE_TOLERANCE` (a frame may sit that much above the one before it: neighbouring frames that
   show the same picture differ in the cosine's third decimal). With K > 1 candidates the library keeps the path
   that steps back least by this same cosine (`best_path`), so the row at K = 1 is the model's own behaviour;
4. reranking: "all" of `score` on `--n` two-object captions at prior_candidates K = 1, 2, 4, on the same seeds.
`--tune` runs on other seeds (its own `--seed` default) with a smaller `--n`: section 1 at η = 0 for
INVERSION_REFINE = 2, 4, 6, 8, then sections 2 (a finer θ grid, decoder guidance 1, 2 and 4) and 4.
`--sections` runs only some of the report's sections. Prints one table per section with n, the rates (%) and the
targets, and the seconds each took.
"""

import argparse
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from PIL import Image

import dalle_cli.engine.noise as noise_stages
from dalle_cli import load
from dalle_cli.engine.latent import Latent, stack
from dalle_cli.images import fit, to_pil
from dalle_cli.shapes.evaluate import detect, score
from dalle_cli.shapes.world import COLORS, HELD_OUT, SHAPES, ObjectSpec, parse_caption, sample_scene

ATTRIBUTES = ("color", "shape", "size", "position")
T = TypeVar("T")
Attrs = dict[str, str] | None  # the largest blob's attributes, None when nothing is detected
REPORT_SEED, TUNE_SEED = 2039, 1031
TUNE_REFINES, TUNE_THETAS, TUNE_GUIDANCES = (2, 4, 6, 8), (0.25, 0.5, 0.55, 0.6, 0.65, 0.7, 1.0), (1.0, 2.0, 4.0)
TARGET_KEPT = "η=0: all four ≥ 95 %"
TARGET_DIFF = "changed ≥ 80 %, kept ≥ 90 %, position ≥ 80 %"
MONOTONE_TOLERANCE = 0.01
TARGET_ENDS = {"fixed": "ends ≥ 90 %, monotone ≥ 90 %", "inverted": "ends ≥ 95 %, monotone ≥ 90 %"}


def attributes(image: Image.Image) -> Attrs:
    blobs = detect(image)
    return {a: getattr(blobs[0], a) for a in ATTRIBUTES} if blobs else None


def percent(flags: Sequence[bool]) -> str:
    return f"{100 * sum(flags) / len(flags):.1f}" if flags else "—"


def table(title: str, header: Sequence[str], rows: list[Sequence[object]], seconds: float) -> None:
    print(f"\n{title} ({seconds:.0f} s)")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(f"{str(x):>{w}}" for x, w in zip(row, widths)).rstrip())


def batched(items: list, size: int, run: Callable[[list, int], list]) -> list:
    """run(chunk, offset) over consecutive chunks of `items`, results concatenated."""
    return [out for i in range(0, len(items), size) for out in run(items[i:i + size], i)]


def psnr(outputs: torch.Tensor, images: list[Image.Image]) -> list[float]:
    """PSNR (dB, peak-to-peak 2) of each output [B, 3, 64, 64] in [-1, 1] against its input picture."""
    mse = (outputs.float().cpu() - fit(images, outputs.shape[-1], outputs.shape[-2])).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(4 / mse)).tolist()


def kept_row(label: str, inputs: list[Attrs], outputs: list[Image.Image], db: list[float] | None) -> list[object]:
    found = [attributes(im) for im in outputs]
    same = {a: [bool(x and y and x[a] == y[a]) for x, y in zip(inputs, found)] for a in ATTRIBUTES}
    every = [all(flags) for flags in zip(*same.values())]
    mean_db = f"{sum(db) / len(db):.1f}" if db else "—"
    return [label, len(outputs), *(percent(same[a]) for a in ATTRIBUTES), percent(every), mean_db]


def variations(model, s, images: list[Image.Image], latent: Latent, inputs: list[Attrs], seed: int, batch: int,
               etas: Sequence[float | None]) -> list[list[object]]:
    """Section 1: one row per η (None: noise variation), the same pictures and seeds each time."""
    seeds = [seed * 10_000 + 5_000 + i for i in range(len(images))]
    rows = []
    for eta in etas:
        if eta is None:
            out = torch.cat(batched(images, batch, lambda c, i: [model.vary_tensors(c, seeds[i:i + len(c)], s)]))
        else:
            out = torch.cat(batched(list(range(len(images))), batch, lambda c, i: [model.render(
                latent.embeds[i:i + len(c)], tuple(x[i:i + len(c)] for x in latent.noises), seeds[i:i + len(c)],
                s, eta=eta)]))
        rows.append(kept_row("noise (vary)" if eta is None else f"η = {eta:g}", inputs, to_pil(out), psnr(out, images)))
    return rows


def changed(spec: ObjectSpec, attribute: str, value: str) -> ObjectSpec:
    """"a {colour} {shape}" of `spec` with its colour or its shape replaced by `value`."""
    return ObjectSpec(value, spec.shape) if attribute == "color" else ObjectSpec(spec.color, value)


def text_diffs(model, s, captions: list[str], latent: Latent, inputs: list[Attrs], rng: random.Random,
               thetas: Sequence[float], guidances: Sequence[float]) -> list[list[object]]:
    """Section 2: per (change, baseline, guidance, θ) the rates of the new attribute, the other kept, position kept."""
    rows = []
    specs = [parse_caption(c).objects[0] for c in captions]
    for change, other in (("color", "shape"), ("shape", "color")):
        targets = [rng.choice([t for t in (changed(o, change, v) for v in (COLORS if change == "color" else SHAPES)
                                           if v != getattr(o, change)) if (t.color, t.shape) not in HELD_OUT])
                   for o in specs]
        for baseline in ("", "from"):
            for g in guidances:
                settings = s.updated({"inversion_guidance": g}, "--guidances")
                results: dict[float, list[tuple[bool, bool, bool]]] = {t: [] for t in thetas}
                for i, (o, target) in enumerate(zip(specs, targets)):
                    v, to = getattr(target, change), target.text()
                    base = ObjectSpec(o.color, o.shape).text() if baseline else ""
                    outs = model.text_diff([latent.row(i)], to, baseline=base, amounts=thetas, settings=settings)
                    for t, out in zip(thetas, outs):
                        a, x = attributes(out), inputs[i]
                        results[t].append((bool(a and a[change] == v), bool(a and x and a[other] == x[other]),
                                           bool(a and x and a["position"] == x["position"])))
                for t, flags in results.items():
                    rates = [percent(column) for column in zip(*flags)]
                    ok = all(float(r) >= goal for r, goal in zip(rates, (80, 90, 80)))
                    rows.append([change, baseline or '""', f"{g:g}", f"{t:g}", len(flags), *rates, "yes" if ok else ""])
    return rows


def interpolations(model, s, images: list[Image.Image], latent: Latent, inputs: list[Attrs], seed: int,
                   frames: int, counts: Sequence[int], inverted: bool = True) -> list[list[object]]:
    """Section 3: each image to the next one of the draw whose colour and shape both differ (as detected), with
    fixed noise kept from each count of noise candidates in `counts`, then (`inverted`) with inverted noise."""
    pairs = []
    for i, a in enumerate(inputs):
        others = [(i + k) % len(inputs) for k in range(1, len(inputs))]
        j = next((j for j in others if a and inputs[j] and inputs[j]["color"] != a["color"]
                  and inputs[j]["shape"] != a["shape"]), None)
        if j is not None:
            pairs.append((i, j))
    rows = []
    for noise, count in [*(("fixed", k) for k in counts), *([("inverted", s.noise_candidates)] if inverted else [])]:
        ends, monotone, nearly = [], [], []
        settings = s.updated({"noise_candidates": count}, "benchmark")
        for k, (i, j) in enumerate(pairs):
            path = model.interpolate([latent.row(i), latent.row(j)], frames, seed * 10_000 + 6_000 + k, settings,
                                     noise=noise)
            first, last = attributes(path[0]), attributes(path[-1])
            ends.append(all(bool(f and f[a] == inputs[n][a]) for f, n in ((first, i), (last, j))
                            for a in ("color", "shape")))
            with torch.inference_mode():
                similarity = F.cosine_similarity(model.encode_image(path).float(), latent.embeds[i:i + 1].float())
            monotone.append(bool((similarity[1:] <= similarity[:-1]).all()))
            nearly.append(bool((similarity[1:] <= similarity[:-1] + MONOTONE_TOLERANCE).all()))
        rows.append([noise, count if noise == "fixed" else "-", len(pairs), frames, percent(ends), percent(monotone),
                     percent(nearly), TARGET_ENDS[noise]])
    return rows


def reranking(model, s, rng: random.Random, n: int, seed: int, batch: int) -> list[list[object]]:
    """Section 4: two-object captions at K = 1, 2, 4 prior candidates, the same seeds."""
    captions = [sample_scene(rng, kind="two")[0] for _ in range(n)]
    rows = []
    for k in (1, 2, 4):
        settings = s.updated({"prior_candidates": k}, "reranking")
        images = batched(captions, batch, lambda c, i: model.generate(c, [seed * 10_000 + 7_000 + i + j
                                                                          for j in range(len(c))], settings))
        scores = [score(c, im) for c, im in zip(captions, images)]
        rows.append([k, n, *(percent([x[key] for x in scores]) for key in ("color", "shape", "binding", "relation",
                                                                           "all"))])
    return rows


def timed(run: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    return run(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="images (paths, captions) per row: 100, or 40 with --tune")
    parser.add_argument("--seed", type=int, default=None, help=f"{REPORT_SEED}, or {TUNE_SEED} with --tune")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--frames", type=int, default=5, help="frames per interpolation path")
    parser.add_argument("--thetas", type=float, nargs="+", default=[0.25, 0.5, 0.55, 0.75, 1.0],
                        help="text-diff θs")
    parser.add_argument("--guidances", type=float, nargs="+", default=None,
                        help="decoder guidances to decode text diffs at (default: the inversion guidance)")
    parser.add_argument("--refine", type=int, default=noise_stages.INVERSION_REFINE, help="INVERSION_REFINE")
    parser.add_argument("--inversion-guidance", type=float, default=None,
                        help="the decoder guidance of inversions (default: the model's)")
    parser.add_argument("--noise", nargs="+", choices=("fixed", "inverted"), default=["fixed", "inverted"],
                        help="section 3's rows")
    parser.add_argument("--noise-candidates", type=int, nargs="+", default=None,
                        help="section 3's fixed-noise rows: noise candidates (default: 1 and the model's)")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--tune", action="store_true", help="run the tuning sweeps instead of the report")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4], help="the report's sections to run")
    args = parser.parse_args()
    n = args.n or (40 if args.tune else 100)
    seed = args.seed if args.seed is not None else TUNE_SEED if args.tune else REPORT_SEED
    model = load(args.model, device="cpu")
    s = model.defaults
    if args.inversion_guidance is not None:
        s = s.updated({"inversion_guidance": args.inversion_guidance}, "--inversion-guidance")
    rng = random.Random(seed)
    captions = [sample_scene(rng, kind="one")[0] for _ in range(n)]
    start = time.perf_counter()
    images = batched(captions, args.batch, lambda c, i: model.generate(c, [seed * 10_000 + i + j
                                                                           for j in range(len(c))], s))
    inputs = [attributes(im) for im in images]
    print(f"{model.info.name}: seed {seed}, n {n}, {torch.get_num_threads()} threads, settings {s}; "
          f"{n} images generated in {time.perf_counter() - start:.0f} s")
    kept_header = ["row", "n", *ATTRIBUTES, "all four", "PSNR dB"]
    refines = TUNE_REFINES if args.tune else (args.refine,)
    latents = {}
    for refine in refines:
        noise_stages.INVERSION_REFINE = refine
        latents[refine], seconds = timed(lambda: stack(batched(images, args.batch, lambda c, i: [model.invert(c, s)])))
        print(f"inverted {n} images at INVERSION_REFINE = {refine} in {seconds:.0f} s")
    if args.tune:
        rows, seconds = timed(lambda: [[f"refine {k}", *variations(model, s, images, latents[k], inputs, seed,
                                                                    args.batch, (0.0,))[0][1:]] for k in refines])
        table(f"1. inverted variation at η = 0 against INVERSION_REFINE (target: {TARGET_KEPT})", kept_header, rows,
              seconds)
        passing = [k for k, row in zip(refines, rows) if float(row[-2]) >= 95]
        refine = passing[0] if passing else refines[-1]
        print(f"smallest passing INVERSION_REFINE: {refine if passing else 'none'}")
    elif 1 in args.sections:
        refine = args.refine
        rows, seconds = timed(lambda: variations(model, s, images, latents[refine], inputs, seed, args.batch,
                                                 (0.0, 0.5, 1.0, None)))
        table(f"1. variations, INVERSION_REFINE = {refine} (target: {TARGET_KEPT})", kept_header, rows, seconds)
    refine = refine if args.tune else args.refine
    latent = latents[refine]
    thetas = TUNE_THETAS if args.tune else args.thetas
    guidances = args.guidances or (TUNE_GUIDANCES if args.tune else (s.for_inversion().decoder_guidance,))
    if args.tune or 2 in args.sections:  # it draws its targets from `rng`: section 4's captions come after them
        rows, seconds = timed(lambda: text_diffs(model, s, captions, latent, inputs, rng, thetas, guidances))
        table(f"2. text diffs (target: {TARGET_DIFF})",
              ["change", "baseline", "guidance", "θ", "n", "changed", "kept", "position", "meets"], rows, seconds)
    if not args.tune and 3 in args.sections:
        counts = (args.noise_candidates or sorted({1, s.noise_candidates})) if "fixed" in args.noise else []
        rows, seconds = timed(lambda: interpolations(model, s, images, latent, inputs, seed, args.frames, counts,
                                                     "inverted" in args.noise))
        table("3. interpolations between pictures of another colour and shape",
              ["noise", "candidates", "paths", "frames", "ends", "monotone", f"within {MONOTONE_TOLERANCE:g}",
               "target"], rows, seconds)
    if args.tune or 4 in args.sections:
        rows, seconds = timed(lambda: reranking(model, s, rng, n, seed, args.batch))
        table("4. reranking, two-object captions (K = 2 or 4 should beat K = 1 on all)",
              ["K", "n", "color", "shape", "binding", "relation", "all"], rows, seconds)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
