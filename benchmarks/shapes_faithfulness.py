"""How faithfully the embedded `shapes` model follows its prompts: the issue #4 table.

    python benchmarks/shapes_faithfulness.py [--n 200] [--seed 2027] [--batch 50] [--model shapes] [--fast]
        [--prior-steps N] [--decoder-steps N] [--sr-steps N] [--prior-guidance G] [--decoder-guidance G]
        [--sampler ddpm|ddim|dpmpp]

Rows (each of `--n` images, prompts drawn by the dataset's grammar from `--seed`, never used in training or tuning,
and image seeds from a separate range): one object with seen colour-shape pairs; one object with the held-out pairs;
two objects with a relation; and `vary` on the generated seen-pair images, judged against their source prompts.
Images are made with the model's default settings through the same library call `dalle gen` uses, and judged by the
model-free evaluator (dalle_cli/shapes/evaluate.py). Prints the fraction right per attribute, the targets, and the
evaluator's own speed (images judged per second).
The sampling options override the model's defaults (its fast preset's, `model.fast`, with `--fast`); with another
`--seed` they choose the registry's defaults and presets on images that the reported table never uses. Also prints
the network calls per image (each stage's steps: a guided step runs both halves in one call) and the seconds per
image of each kind of row.
"""

import argparse
import random
import time

import torch
from PIL import Image

from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings
from dalle_cli.settings import SAMPLERS
from dalle_cli import load
from dalle_cli.shapes.evaluate import COLUMNS, ROW_HELD_OUT, ROW_SEEN, ROW_TWO, ROW_VARY, score, summarize
from dalle_cli.shapes.world import sample_scene

TARGETS = {
    ROW_SEEN: "colour ≥ 95 %, shape ≥ 90 %, position ≥ 90 %, size ≥ 90 %",
    ROW_HELD_OUT: "colour ≥ 85 %, shape ≥ 75 %",
    ROW_TWO: "all ≥ 60 %",
    ROW_VARY: "colour and shape ≥ 90 %",
}


KINDS = {"steps": int, "guidance": float, "sampler": str}  # the sampling options, by the kind of setting


def _prompts(rng: random.Random, n: int, kind: str, held_out: bool) -> list[str]:
    return [sample_scene(rng, kind=kind, allow_held_out=held_out, held_out_only=held_out)[0] for _ in range(n)]


def _judge(prompts: list[str], images: list[Image.Image], row: str, timing: list[float]) -> list[dict]:
    """`score` every image against its prompt; adds the seconds spent judging to `timing`."""
    start = time.perf_counter()
    scores = [score(p, im, row=row) for p, im in zip(prompts, images)]
    timing.append(time.perf_counter() - start)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per row")
    parser.add_argument("--seed", type=int, default=2027, help="seed of the prompt draw and base of the image seeds")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--fast", action="store_true", help="start from the model's fast preset")
    knobs = {name: knob for name, knob in Settings.knobs().items() if knob.kind in KINDS}
    for name, knob in knobs.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=KINDS[knob.kind], default=None,
                            choices=SAMPLERS if knob.kind == "sampler" else None)
    args = parser.parse_args()
    model = load(args.model, device="cpu")
    overrides = {name: getattr(args, name) for name in knobs if getattr(args, name) is not None}
    settings = (model.fast if args.fast else model.defaults).updated(overrides, "options")
    rng = random.Random(args.seed)
    rows = {ROW_SEEN: _prompts(rng, args.n, "one", False), ROW_HELD_OUT: _prompts(rng, args.n, "one", True),
            ROW_TWO: _prompts(rng, args.n, "two", False)}
    scores, seen_images, judging, judging_vary = [], [], [], []
    start = time.perf_counter()
    for offset, (row, prompts) in enumerate(rows.items()):
        for i in range(0, len(prompts), args.batch):
            chunk = prompts[i:i + args.batch]
            seeds = [args.seed * 10_000 + offset * 1_000 + i + j for j in range(len(chunk))]
            images = model.generate(chunk, seeds, settings)
            scores += _judge(chunk, images, row, judging)
            if row == ROW_SEEN:
                seen_images += images
    generated = time.perf_counter()
    prompts = rows[ROW_SEEN]
    for i in range(0, len(prompts), args.batch):
        sources = seen_images[i:i + args.batch]
        variations = model.vary(sources, [args.seed * 10_000 + 5_000 + i + j for j in range(len(sources))],
                                settings)
        scores += _judge(prompts[i:i + args.batch], variations, ROW_VARY, judging_vary)
    end = time.perf_counter()
    made = sum(len(p) for p in rows.values())
    s = settings
    print(f"{model.info.name}: {made + len(prompts)} images in {end - start:.0f} s "
          f"({torch.get_num_threads()} threads), settings {settings}")
    print(f"gen: {s.prior_steps + s.decoder_steps + s.sr_steps} network calls per image, "
          f"{(generated - start - sum(judging)) / made:.3f} s per image; vary: {s.decoder_steps + s.sr_steps} "
          f"calls, {(end - generated - sum(judging_vary)) / len(prompts):.3f} s per image (judging left out)")
    print(f"{'row':28} {'n':>4} " + " ".join(f"{c:>8}" for c in COLUMNS) + "   target")
    for line in summarize(scores):
        cells = " ".join(f"{'—' if line[c] is None else f'{100 * line[c]:.1f}':>8}" for c in COLUMNS)
        print(f"{line['row']:28} {line['n']:>4} {cells}   {TARGETS.get(str(line['row']), '')}")
    print(f"evaluator: {len(scores) / (sum(judging) + sum(judging_vary)):.0f} images judged per second")


if __name__ == "__main__":
    main()
