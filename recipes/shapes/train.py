"""Train the embedded `shapes` model from scratch on a CPU: tokenizer, CLIP, prior, decoder and super-resolution.

    python -m recipes.shapes.train --out weights/shapes --seed 0 [--minutes 110] [--threads 1]

The result is a complete unCLIP model in Karlo's hub layout (see `train_export.py`), loadable by the same loader as
Karlo. The stages run in dependency order: tokenizer -> CLIP -> prior -> decoder; the super-resolution stage needs
nothing but images, so it trains in a second process alongside the others (each process uses `--threads` threads;
on a 2-core machine two single-threaded processes beat one two-threaded one, and stay fast when other work shares
the CPU). The time budget is split between the stages by STAGE_SHARES; each stage stops at its share of the time or
its step limit, whichever comes first. Losses go to stdout and to `train_log.txt`, and `recipe.json` records the
seed and the steps each stage took: `--steps` with those numbers replays the run exactly (everything is seeded).
"""

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dalle_cli.configs import from_config
from dalle_cli.errors import DalleError, UsageError
from dalle_cli.models.unet import UNet, UNetConfig

from .train_clip import learn_tokenizer, train_clip, train_prior
from .train_common import LOG, StageBudget, count_parameters, setup_logging
from .train_diffusion import super_res_worker, train_decoder
from .train_export import (
    decoder_config,
    image_encoder_config,
    prior_config,
    save_component,
    super_res_config,
    text_encoder_config,
    text_proj_config,
    weights_size,
    write_json,
    write_static_files,
)

STAGES = ("clip", "prior", "decoder", "super_res")
# Fractions of the time budget. clip, prior and decoder run one after the other in the main process; super_res runs
# alongside them in its own process, so the shares add up to more than 1. The rest of the main share (~5%) is for
# the embedding statistics, the text encodings and writing the files.
STAGE_SHARES = {"clip": 0.28, "prior": 0.07, "decoder": 0.60, "super_res": 0.85}
UNLIMITED = 10**9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.shapes.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=110.0, help="total wall-time budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--steps", type=str, default=None,
                        help="step limits clip,prior,decoder,super_res (e.g. from recipe.json); default: time only")
    return parser.parse_args(argv)


def step_limits(text: str | None) -> dict[str, int]:
    """The per-stage step limits given as "clip,prior,decoder,super_res", or no limits."""
    if text is None:
        return dict.fromkeys(STAGES, UNLIMITED)
    values = [int(v) for v in text.split(",")]
    if len(values) != len(STAGES) or min(values) < 1:
        raise UsageError(f"--steps takes {len(STAGES)} positive integers ({','.join(STAGES)}), got {text!r}")
    return dict(zip(STAGES, values))


def train(out: Path, seed: int, minutes: float, threads: int, limits: dict[str, int]) -> dict:
    """Run the whole recipe into `out`; returns what recipe.json records."""
    started = time.monotonic()
    seconds = {stage: share * minutes * 60 for stage, share in STAGE_SHARES.items()}
    budgets = {stage: StageBudget(stage, limits[stage], seconds[stage]) for stage in ("clip", "prior", "decoder")}
    torch.set_num_threads(threads)
    write_static_files(out)

    scratch = tempfile.TemporaryDirectory()
    sr_weights = str(Path(scratch.name) / "super_res.safetensors")
    worker = multiprocessing.get_context("spawn").Process(
        target=super_res_worker,
        args=(seconds["super_res"], limits["super_res"], seed * 100 + 4, sr_weights, str(out / "train_log.txt"),
              threads))
    worker.start()

    tokenizer = learn_tokenizer(random.Random(seed * 100), out / "tokenizer")
    LOG.info("tokenizer: %d tokens, prompts of at most %d", len(tokenizer.vocab), tokenizer.model_max_length)

    budgets["clip"].started = time.monotonic()
    text, vision = train_clip(tokenizer, budgets["clip"], random.Random(seed * 100 + 1), seed * 100 + 1)
    LOG.info("clip: text tower %s, image tower %s", count_parameters(text), count_parameters(vision))
    save_component(out / "text_encoder", text_encoder_config(tokenizer.vocab), text, "transformers")
    save_component(out / "image_encoder", image_encoder_config(), vision, "transformers")

    budgets["prior"].started = time.monotonic()
    prior = train_prior(tokenizer, text, vision, budgets["prior"], random.Random(seed * 100 + 2), seed * 100 + 2)
    LOG.info("prior: %s", count_parameters(prior))
    save_component(out / "prior", prior_config(), prior, "diffusers")

    budgets["decoder"].started = time.monotonic()
    decoder = train_decoder(tokenizer, text, vision, budgets["decoder"], random.Random(seed * 100 + 3), seed * 100 + 3)
    LOG.info("decoder: unet %s, text_proj %s", count_parameters(decoder.unet), count_parameters(decoder.text_proj))
    save_component(out / "text_proj", text_proj_config(), decoder.text_proj, "diffusers")
    save_component(out / "decoder", decoder_config(), decoder.unet, "diffusers")

    worker.join()
    if worker.exitcode != 0:
        raise DalleError(f"the super-resolution process failed (exit code {worker.exitcode}); see the log")
    with safe_open(sr_weights, framework="pt") as f:
        sr_steps = int(f.metadata()["steps"])
    super_res = _unet_from_file(sr_weights)
    for name, first in (("super_res_first", True), ("super_res_last", False)):
        save_component(out / name, super_res_config(first), super_res, "diffusers")
    scratch.cleanup()

    steps = {stage: budget.max_steps for stage, budget in budgets.items()} | {"super_res": sr_steps}
    recipe = {"seed": seed, "minutes": minutes, "threads": threads, "steps": steps,
              "replay": f"--seed {seed} --steps {','.join(str(steps[s]) for s in STAGES)} --minutes 10000",
              "seconds": round(time.monotonic() - started), "weights_bytes": weights_size(out),
              "torch": torch.__version__}
    write_json(out / "recipe.json", recipe)
    return recipe


def _unet_from_file(path: str) -> UNet:
    """The super-resolution UNet with the weights the worker process wrote."""
    unet = UNet(from_config(UNetConfig, super_res_config(True)))
    unet.load_state_dict(load_file(path))
    return unet


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit code (that of the `DalleError` raised, logged, or 0)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(str(args.out / "train_log.txt"))
    LOG.info("training the shapes model into %s: seed %d, %.1f minutes, %d thread(s) per process", args.out,
             args.seed, args.minutes, args.threads)
    try:
        recipe = train(args.out, args.seed, args.minutes, args.threads, step_limits(args.steps))
    except DalleError as e:
        LOG.error("error: %s", e)
        return e.exit_code
    LOG.info("done in %d s: steps %s, weights %.1f MB (%s)", recipe["seconds"], recipe["steps"],
             recipe["weights_bytes"] / 1e6, recipe["replay"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
