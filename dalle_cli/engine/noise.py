"""Per-image noise: the seed contract every family keeps.

Every image has its own seed, and all of its randomness comes from one CPU `torch.Generator` seeded with it, drawn in
the reference pipeline's order (one stage after the other: the stage's start x_T, then one tensor per noisy step).
An image therefore depends only on the checkpoint, its inputs, its seed and the settings, never on the batch it is
made in, and equals the diffusers pipelines given `generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]`.
"""

import functools
from typing import Callable, Sequence

import torch

from ..api import Progress, ProgressCallback
from ..diffusion import ddim, dpmpp, sampler, schedule


class ImageNoise:
    """The generators of a batch of images, one per seed, in the batch's order."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, count: int = 1) -> torch.Tensor:
        """`count` successive draws from each image's generator: [count, B, *shape] on `device`.

        Each draw is its own `torch.randn((1, *shape))` call, as diffusers' `randn_tensor` makes it, because one larger
        draw does not give the same numbers. All draws move to `device` in one copy, so a stage's step loop never
        waits on a host-to-device transfer.
        """
        draws = [torch.stack([torch.randn((1, *shape), generator=g, dtype=dtype) for _ in range(count)])
                 for g in self.generators]
        return torch.cat(draws, dim=1).to(device)

    def start(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """One draw per image, a stage's x_T: [B, *shape]."""
        return self.draw(shape, dtype, device)[0]


Loop = Callable[..., torch.Tensor]  # sampler.sample or ddpm.sample with the schedule and config bound by keyword


def sample_stage(denoise: sampler.Denoiser, x: torch.Tensor, steps: list[int], noise: ImageNoise,
                 loop: Loop) -> torch.Tensor:
    """Run one stage's sampler `loop(denoise, x, steps, noise_fn=...)` from x_T = `x` over `steps`, drawing the
    stage's step noises (after x_T) from the images' generators before the loop starts."""
    noisy = sum(sampler.needs_noise(t) for t in steps)
    noises = noise.draw(tuple(x.shape[1:]), x.dtype, x.device, noisy)  # [noisy, B, ...]
    return loop(denoise, x, steps, noise_fn=lambda i: noises[i])


def unclip_loop(config: schedule.SchedulerConfig) -> Loop:
    """The unCLIP ancestral sampler on `config`'s schedule, for `sample_stage`."""
    return functools.partial(sampler.sample, schedule=schedule.noise_schedule(config), config=config)


def ddim_stage(denoise: sampler.Denoiser, x: torch.Tensor, steps: list[int], noise: ImageNoise,
               tables: schedule.NoiseSchedule, config: ddim.DDIMConfig, eta: float) -> torch.Tensor:
    """Run one stage by DDIM at η (`ddim.sample`) from x_T = `x` over `steps`; at η > 0 the stage's step noises,
    one per step but the last, are drawn from the images' generators before the loop starts."""
    count = ddim.noises(steps, eta)
    noises = noise.draw(tuple(x.shape[1:]), x.dtype, x.device, count) if count else None
    return ddim.sample(denoise, x, steps, tables, config, eta, (lambda i: noises[i]) if noises is not None else None)


def run_stage(denoise: sampler.Denoiser, x: torch.Tensor, steps: list[int], noise: ImageNoise,
              tables: schedule.NoiseSchedule, config: ddim.DDIMConfig, ancestral: Loop, chosen: str | None,
              eta: float | None = None) -> torch.Tensor:
    """Run one stage from x_T = `x` over the family's `steps`: by DDIM at `eta` when it is given (the decoding of
    an inverted latent, paper §3); else by the `chosen` sampler (`settings.SAMPLERS`): the stage's own ancestral
    `ancestral` loop (None or "ddpm"), or one of the deterministic ones, which draw no step noise (`deterministic`).
    DDIM and DPM-Solver++ start one timestep below a singular top of the schedule (`ddim.invertible`)."""
    if eta is not None:
        return ddim_stage(denoise, x, ddim.invertible(steps, tables), noise, tables, config, eta)
    if chosen in (None, "ddpm"):
        return sample_stage(denoise, x, steps, noise, ancestral)
    return deterministic(denoise, x, steps, tables, config, chosen)


def deterministic(denoise: sampler.Denoiser, x: torch.Tensor, steps: list[int], tables: schedule.NoiseSchedule,
                  config: ddim.DDIMConfig, chosen: str) -> torch.Tensor:
    """DDIM at η = 0 ("ddim") or DPM-Solver++(2M) ("dpmpp") from `x` down `steps` (a singular top lowered), one
    network call per step."""
    steps = ddim.invertible(steps, tables)
    if chosen == "ddim":
        return ddim.sample(denoise, x, steps, tables, config)
    return dpmpp.sample(denoise, x, steps, tables, config)


INVERSION_REFINE = 4  # corrections per DDIM inversion step (`ddim.invert`), chosen on shapes (benchmarks/)


def invert_stage(denoise: sampler.Denoiser, x0: torch.Tensor, steps: list[int], tables: schedule.NoiseSchedule,
                 config: ddim.DDIMConfig, on_step: sampler.OnStep) -> torch.Tensor:
    """DDIM inversion of one stage's clean sample x0 up `steps` (those `ddim_stage` samples down), refined
    `INVERSION_REFINE` times per step. A model that predicts x_0 has no noise at ᾱ = 1: its inversion starts at
    t = 0 and takes its first step from the sample itself, corrected as often against the sampling steps
    below it (`ddim.invert`'s `clean_x0`)."""
    x0_model = config.prediction_type == "sample"
    return ddim.invert(denoise, x0, steps, tables, config, on_step, clean_at=0 if x0_model else -1,
                       refine=INVERSION_REFINE, clean_x0=x0_model)


def reporting(denoise: sampler.Denoiser, stage: str, steps: int, images: int, progress: ProgressCallback | None,
              offset: int = 0) -> sampler.Denoiser:
    """`denoise`, reporting one progress event of `stage` per call (for `images` images), numbered on from
    `offset` + 1 of `steps`."""
    calls = [offset]

    def reported(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        out = denoise(x, t, i)
        calls[0] += 1
        if progress is not None:
            progress(Progress(stage, calls[0], steps, 0, images, images))
        return out

    return reported
