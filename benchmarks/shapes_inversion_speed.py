"""What the inversion guidance costs on the embedded `shapes` model: DDIM inversion of 25 generated pictures and
their η = 0 decoding, guided at the decoder's guidance and unguided, alternately, twice each.

    python benchmarks/shapes_inversion_speed.py [--n 25] [--repeats 2]

An unguided step runs the decoder on one half where a guided one runs it on two (in one call), so on the CPU the
decoder's share of the time should about halve; the super-resolution stage is never guided.
"""

import argparse
import random
import time

import torch

from dalle_cli import load
from dalle_cli.shapes.world import sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = load("shapes", device="cpu")
    s = model.defaults
    rng = random.Random(7)
    images = model.generate([sample_scene(rng, kind="one")[0] for _ in range(args.n)], list(range(args.n)), s)
    print(f"shapes, {args.n} pictures, {torch.get_num_threads()} threads")
    for _ in range(args.repeats):
        for scale in (s.decoder_guidance, 1.0):
            settings = s.updated({"inversion_guidance": scale}, "benchmark")
            start = time.perf_counter()
            latent = model.invert(images, settings)
            inverted = time.perf_counter()
            model.render(latent.embeds, latent.noises, [0] * args.n, settings)
            print(f"inversion guidance {scale:g}: invert {inverted - start:.1f} s, decode at η = 0 "
                  f"{time.perf_counter() - inverted:.1f} s")


if __name__ == "__main__":
    main()
