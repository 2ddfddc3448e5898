"""Edits with an unCLIP model, which has no inpainting network: RePaint (Lugmayr et al. 2022) in the decoder for a
masked region, SDEdit (Meng et al. 2022) for image to image, both conditioned on the prompt's prior embedding.

- The decoder repaints at its own size (64 px for Karlo, 32 px for shapes): the picture is downsampled as
  `UnCLIP.invert` does it (antialiased bicubic), the mask by "any": a decoder pixel is repainted when any picture
  pixel under it is, so no repainted region vanishes. At every step the kept region is re-imposed at that step's
  noise level, and `settings.resample` walks each step back and forth (`diffusion.repaint`).
- Super-resolution then runs as usual, conditioned on the repainted small image, with the kept region of the
  full-size picture re-imposed at every step too (no resampling there: it only adds detail).
- With `settings.strength` s the decoder runs only the last int(s x steps) of its steps (at least one), from the
  picture noised to the first of them, as diffusers' image-to-image pipelines count them; without a mask that is
  SDEdit, and super-resolution runs as `generate` runs it.

Draw order, per image generator: the prior's (as `generate`), the decoder's start (x_T, or the noise of the
noised picture), its walk's noises (`repaint.draws`), then the super-resolution x_T and its steps' noises.
"""

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ...api import Progress, ProgressCallback
from ...diffusion import repaint, sampler, schedule
from ...diffusion.sampler import Denoiser
from ...engine.noise import ImageNoise, reporting
from .settings import UnCLIPSettings

if TYPE_CHECKING:
    from .pipeline import UnCLIP


def run_stage(denoise: Denoiser, x0: torch.Tensor, steps: list[int], config: schedule.SchedulerConfig,
              noise: ImageNoise, start: torch.Tensor | None, keep: torch.Tensor | None, resample: int) -> torch.Tensor:
    """One stage of an edit over `steps`: from `start` (x_T) when given, else from the picture x0 [B, C, H, W]
    noised to steps[0] with a draw; the region where `keep` [B, 1, H, W] is 1 re-imposed (None: nothing kept)."""
    tables = schedule.noise_schedule(config)
    shape = tuple(x0.shape[1:])
    x = start if start is not None else repaint.noised(x0, steps[0], noise.start(shape, x0.dtype, x0.device),
                                                       tables)
    path = repaint.walk(len(steps), resample if keep is not None else 1)
    count = repaint.draws(path, steps, keep is not None)
    noises = noise.draw(shape, x0.dtype, x0.device, count) if count else None  # [count, B, C, H, W]

    def step(output: torch.Tensor, t: int, prev_t: int, x_t: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        return sampler.step(output, t, prev_t, x_t, tables, config, eps)

    return repaint.sample(denoise, x, steps, path, step, tables, lambda j: noises[j],  # type: ignore[index]
                          x0 if keep is not None else None, keep)


def calls(steps: int, strength: float | None, resample: int, masked: bool) -> int:
    """The decoder's model calls in an edit of `steps` steps: what its progress counts."""
    count = len(schedule.strength_steps(list(range(steps)), strength))
    path = repaint.walk(count, resample if masked else 1)
    return sum(b > a for a, b in zip(path, path[1:]))


def edit(model: "UnCLIP", pixels: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
         seeds: Sequence[int], s: UnCLIPSettings, progress: ProgressCallback) -> torch.Tensor:
    """The edited pictures [B, 3, S, S] in [-1, 1] of pictures [B, 3, S, S] in [-1, 1] at the model's output size,
    with `masks` [B, 1, S, S] (1 = repaint) or None (image to image at `s.strength`), towards the prompts."""
    parts, n = model.parts, len(seeds)
    progress(Progress("edit", 1, 1, 0, n, n))
    pixels = pixels.to(model.device, model.dtype)
    masks = masks.to(model.device, model.dtype) if masks is not None else None
    with model._running():
        noise = ImageNoise(seeds)
        text = model.encode_text(list(prompts), s.prior_guidance > 1.0 or s.decoder_guidance > 1.0)
        embeds = model.prior(text, noise, s, progress=progress)
        size = parts.decoder.config.sample_size
        small = F.interpolate(pixels.float(), size=(size, size), mode="bicubic", align_corners=False,
                              antialias=model.device.type != "mps").clamp(-1, 1).to(model.dtype)  # [B, 3, s, s]
        keep_small = 1 - F.adaptive_max_pool2d(masks.float(), size).to(model.dtype) if masks is not None else None
        config = parts.decoder_scheduler
        steps = schedule.strength_steps(schedule.timesteps(s.decoder_steps, config), s.strength)
        start = noise.start(tuple(small.shape[1:]), model.dtype, model.device) if s.strength is None else None
        model.residency.hold(parts.text_proj, parts.decoder)
        total = calls(s.decoder_steps, s.strength, s.resample, masks is not None)
        denoise = reporting(model._decoder_model(embeds, text, s), "decoder", total, n, progress)
        small = run_stage(denoise, small, steps, config, noise, start, keep_small, s.resample).clamp(-1, 1)
        if masks is None:
            return model.upscale(small, noise, s, progress=progress)
        model.residency.hold(parts.super_res_first)
        config = parts.super_res_scheduler
        steps = schedule.timesteps(s.sr_steps, config)
        denoise = reporting(model._super_res_model(small, len(steps)), "super_res", len(steps), n, progress)
        x_T = noise.start(tuple(pixels.shape[1:]), model.dtype, model.device)
        return run_stage(denoise, pixels, steps, config, noise, x_T, 1 - masks, 1)
