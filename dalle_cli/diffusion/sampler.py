"""Ancestral DDPM sampling for unCLIP as pure functions over tensors and a denoiser callable (k-diffusion style).

    steps = timesteps(25, config)
    x = sample(denoise, x_T, steps, noise_schedule(config), config, noise_fn)

The math mirrors diffusers' `UnCLIPScheduler.step` and the way the unCLIP pipelines drive it, so that with the same
random numbers the results are the same to float32 rounding:
- the per-step coefficients are 0-d float32 CPU tensors read from the `NoiseSchedule` tables and combined with the
  sample exactly as the reference does (so an fp16/bf16 sample on CUDA gets the reference's dtype promotions);
- randomness is passed in, never drawn here. Each step except the last (t = 0) takes one standard-normal tensor
  of the sample's shape (`needs_noise`); the reference draws it as `torch.randn(shape, generator=g,
  dtype=model_output.dtype)` on the generator's device right after the model call, then moves it to the sample's
  device. The caller reproduces the reference's stream by drawing the same tensors in the same order (x_T first,
  then one per noisy step, stage after stage) from its per-image CPU `torch.Generator`s.
Nothing here reads a device tensor back to the host, so a loop over CUDA tensors never waits on the GPU; for that to
hold end to end the caller's `denoise` and `noise_fn` must not synchronise either (draw all noise on the CPU before
the loop and move it in one copy, for instance). This module never imports models.
"""

from typing import Callable

from torch import Tensor

from ..errors import SchedulerError
from .schedule import NoiseSchedule, SchedulerConfig

Denoiser = Callable[[Tensor, int, int], Tensor]  # (x_t, t, step index i) -> (already guided) model output
NoiseFn = Callable[[int], Tensor]  # step index i -> standard-normal noise of x_t's shape
OnStep = Callable[[int, int, Tensor], None]  # (step index i, t, x_{prev_t}) after each step


def needs_noise(t: int) -> bool:
    """Whether the step at timestep `t` adds fresh noise: every step but the final one to the clean sample (t = 0).

    A stage of n steps therefore takes n - 1 noise tensors (`timesteps` always ends with t = 0).
    """
    return t > 0


def checked_output(model_output: Tensor, t: int, prev_t: int, x: Tensor, num_train_timesteps: int,
                   noise: Tensor | None, learned: str | None) -> tuple[Tensor, Tensor | None]:
    """The checks every ancestral step makes before its math, and the model output split for it: (the C channels
    the step reads as ε or x_0, the C variance values or None). Raises `SchedulerError` unless
    -1 <= prev_t < t < num_train_timesteps, `noise` is given exactly when `needs_noise(t)`, and the output has C
    channels, or 2C for a model whose variance type `learned` names."""
    if not 0 <= t < num_train_timesteps or not -1 <= prev_t < t:
        last = num_train_timesteps - 1
        raise SchedulerError(f"a step needs -1 <= prev_t < t <= {last}, got t={t}, prev_t={prev_t}")
    if (noise is not None) != needs_noise(t):
        raise SchedulerError(f"the step at t={t} takes {'one noise tensor' if needs_noise(t) else 'no noise'}")
    channels = x.shape[1]
    if learned is not None:
        if model_output.shape[1] != 2 * channels:
            got = model_output.shape[1]
            raise SchedulerError(f"a {learned} model must output 2 x {channels} channels, got {got}")
        output, variance_values = model_output.split(channels, dim=1)  # (B, C, ...) each
        return output, variance_values
    if model_output.shape[1] != channels:
        raise SchedulerError(f"the model must output {channels} channels, got {model_output.shape[1]}")
    return model_output, None


def step(
    model_output: Tensor,
    t: int,
    prev_t: int,
    x: Tensor,
    schedule: NoiseSchedule,
    config: SchedulerConfig,
    noise: Tensor | None = None,
) -> Tensor:
    """One ancestral step x_t -> x_{prev_t}, sampled from the DDPM posterior q(x_{prev_t} | x_t, x_0 = predicted x_0).

    - `t`: the current timestep; `prev_t` < t the next one in `timesteps(...)`, or t - 1 = -1 after the last
      step (t = 0), where ᾱ_{-1} = 1, i.e. the clean sample.
    - The step may skip timesteps; its beta is then recomputed from the kept timesteps, β = 1 - ᾱ_t / ᾱ_{prev_t}
      (Improved DDPM §4), while an adjacent step (prev_t = t - 1) uses the stored β_t.
    - x_0 = model_output (prediction_type "sample"), or (x_t - √(1-ᾱ_t) ε) / √ᾱ_t for "epsilon" (DDPM eq. 15);
      clamped to ±clip_sample_range when clip_sample.
    - mean μ = √ᾱ_{prev_t} β / (1-ᾱ_t) · x_0 + √(1-β) (1-ᾱ_{prev_t}) / (1-ᾱ_t) · x_t (DDPM eq. 7).
    - log-variance: "fixed_small_log" uses log β̃ with β̃ = (1-ᾱ_{prev_t}) / (1-ᾱ_t) · β (DDPM eq. 7, clamped at
      1e-20); "learned_range" interpolates v log β + (1-v) log β̃ with v = (values + 1) / 2 (Improved DDPM eq. 15),
      reading the values from the second half of `model_output`'s 2C channels.
    - returns μ + exp(log-variance / 2) · noise, or μ at t = 0. `noise` (standard normal, x's shape) must be
      given exactly when `needs_noise(t)`.

    `x` is (B, C, ...) in any float dtype on any device; the result has x's shape (and the dtype promotion of
    model_output with x).
    """
    learned = config.variance_type if config.variance_type == "learned_range" else None
    model_output, variance_values = checked_output(model_output, t, prev_t, x, config.num_train_timesteps, noise,
                                                   learned)

    # 0-d float32 CPU scalars
    alpha_bar = schedule.alpha_bar(t)
    alpha_bar_prev = schedule.alpha_bar(prev_t)
    beta = schedule.betas[t] if prev_t == t - 1 else 1 - alpha_bar / alpha_bar_prev
    one_minus_alpha_bar = 1 - alpha_bar
    one_minus_alpha_bar_prev = 1 - alpha_bar_prev

    if config.prediction_type == "epsilon":
        x0 = (x - one_minus_alpha_bar.sqrt() * model_output) / alpha_bar.sqrt()
    else:
        x0 = model_output
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)

    x0_coeff = alpha_bar_prev.sqrt() * beta / one_minus_alpha_bar
    xt_coeff = (1 - beta).sqrt() * one_minus_alpha_bar_prev / one_minus_alpha_bar
    mean = x0_coeff * x0 + xt_coeff * x
    if noise is None:
        return mean

    posterior_variance = one_minus_alpha_bar_prev / one_minus_alpha_bar * beta  # β̃
    if config.variance_type == "learned_range":
        frac = (variance_values + 1) / 2
        log_variance = frac * beta.log() + (1 - frac) * posterior_variance.log()
    else:
        log_variance = posterior_variance.clamp(min=1e-20).log()
    return mean + (0.5 * log_variance).exp() * noise


def sample(
    denoise: Denoiser,
    x: Tensor,
    steps: list[int],
    schedule: NoiseSchedule,
    config: SchedulerConfig,
    noise_fn: NoiseFn,
    on_step: OnStep | None = None,
) -> Tensor:
    """Run the ancestral sampler from x = x_T over `steps` (from `timesteps(...)`) and return the final sample.

    At step i (timestep t = steps[i]) the loop calls `denoise(x, t, i)` for the model output (guided already, see
    `guidance.guide`; `i` lets the super-resolution stage swap in its last-step network at i = len(steps) - 1), then
    `noise_fn(i)` if `needs_noise(t)`, i.e. for every step but the last, in that order, which is the order the
    reference draws its random numbers in. `on_step(i, t, x)` sees each new sample (progress bars, previews).
    The loop itself reads nothing back from the device.
    """
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else t - 1
        model_output = denoise(x, t, i)
        noise = noise_fn(i) if needs_noise(t) else None
        x = step(model_output, t, prev_t, x, schedule, config, noise)
        if on_step is not None:
            on_step(i, t, x)
    return x
