"""The DDPM sampler of Kandinsky 2.2's decoder as pure functions over tensors and a denoiser callable.

    steps = timesteps(50, config)
    x = sample(denoise, x_T, steps, noise_schedule(config), config, noise_fn)

Ancestral sampling of Ho et al., "Denoising Diffusion Probabilistic Models" (2020), on a subset of the training
timesteps, as diffusers' `DDPMScheduler` does it and with the same arguments as `sampler.sample`, so a pipeline can
drive either sampler the same way. With the same random numbers the results equal the reference's to the bit in
float32 (and follow its promotions in float16 / bfloat16):
- the tables are float32 CPU tensors built as the reference builds them, and every per-step coefficient is a 0-d
  float32 CPU tensor combined with the sample in the reference's order of operations;
- a step goes from t to the next timestep of `timesteps(...)`, or to the clean sample (prev_t = -1, ᾱ = 1) after
  the last one. This is what diffusers 0.42.1's `previous_timestep` does once `set_timesteps` ran (it looks t up in
  its timesteps); older diffusers used t - num_train_timesteps // n, which differs where the spacing is uneven and,
  with "leading" spacing, at the last step when n > num_train_timesteps / 2 and steps_offset > 0;
- randomness is passed in, never drawn here. The step at t takes one standard-normal tensor of the sample's shape
  exactly when t > 0 (`needs_noise`). Only the last step can have t = 0, so the noisy steps are always the first
  ones. With Kandinsky's config ("leading" spacing, steps_offset 1) the last timestep is 1, so *every* step is noisy:
  a run of n steps takes n noise tensors after x_T. Its last step goes to the clean sample, where the posterior
  variance β̃ = 0 is clamped to 1e-20, so that noise is added times 1e-10 (and underflows to 0 in float16), but it
  is still drawn.

How `KandinskyV22Pipeline` (diffusers 0.42.1) drives this scheduler, which is what a caller reproduces:
- x_T = `randn_tensor((B, C, h, w), generator, dtype=image_embeds.dtype)` (the UNet's dtype) times
  `init_noise_sigma` = 1.0. With one CPU generator per image, each image's draw is its own
  `torch.randn((1, C, h, w), generator=g)`, made on the CPU and moved to the device (`engine.noise.ImageNoise`).
- At each step the UNet runs on the doubled batch [x; x] with the conditioning [negative; positive] only when
  guidance_scale > 1 (at a scale of 1 or less there is no doubled batch and no guidance formula at all, unlike the
  unCLIP pipelines). Its 2C = 8 output channels are [ε | variance values]; the pipeline guides the ε half,
  uncond + s · (cond - uncond), and keeps the conditional half's variance values, which is
  `guidance.guide(output, s, learned_variance=True)`.
- Then, unless the scheduler learns its variance (`learns_variance`: variance_type "learned" or "learned_range"),
  it keeps the ε half only, `output[:, :C]`, before `step`. Kandinsky's scheduler is "fixed_small", so the UNet's
  variance channels are thrown away. `step` takes the model output in the form the config implies: C channels, or
  2C for the learned variance types.
- `step` then draws its noise after the model call and only when t > 0:
  `randn_tensor(ε.shape, generator, dtype=ε.dtype)`, again one `torch.randn((1, C, h, w), generator=g)` per image
  on the CPU, in step order. The caller reproduces that stream by drawing x_T and then one tensor per noisy step, in
  order, from each image's generator.
Nothing here reads a device tensor back to the host. This module never imports models.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..configs import check_choice
from ..errors import ConfigError, SchedulerError
from . import schedule
from .sampler import Denoiser, NoiseFn, OnStep, checked_output, needs_noise
from .schedule import NoiseSchedule

__all__ = ["DDPMConfig", "add_noise", "learns_variance", "needs_noise", "noise_schedule", "sample", "step",
           "timesteps"]


@dataclass(frozen=True)
class DDPMConfig:
    """A `DDPMScheduler`'s `scheduler_config.json`: every key of the reference with the reference's default.

    Keys of other schedulers (DDIM's `set_alpha_to_one`, found in Kandinsky's config) are ignored by `from_config`.
    Values dalle does not implement raise `ConfigError`: the beta schedule "laplace", the variance type
    "fixed_large_log" (the reference takes the square root of a negative log-variance there, which gives NaN),
    `trained_betas`, `thresholding` and `rescale_betas_zero_snr`.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2" | "sigmoid"
    trained_betas: tuple[float, ...] | None = None  # unsupported: must stay None
    variance_type: str = "fixed_small"  # "fixed_small" | "fixed_small_log" | "fixed_large" | "learned" | …_range
    clip_sample: bool = True  # clamp the predicted x_0 to [-clip_sample_range, clip_sample_range]
    prediction_type: str = "epsilon"  # the model predicts ε ("epsilon"), x_0 ("sample") or v ("v_prediction")
    thresholding: bool = False  # dynamic thresholding (Imagen): unsupported, must stay False
    dynamic_thresholding_ratio: float = 0.995  # only read by thresholding
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0  # only read by thresholding
    timestep_spacing: str = "leading"  # "leading" | "trailing" | "linspace"
    steps_offset: int = 0  # added to every "leading" timestep
    rescale_betas_zero_snr: bool = False  # unsupported: must stay False

    def __post_init__(self) -> None:
        check_choice("scheduler", "beta_schedule", self.beta_schedule,
                     ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"))
        check_choice("scheduler", "variance_type", self.variance_type,
                     ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"))
        check_choice("scheduler", "prediction_type", self.prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("scheduler", "timestep_spacing", self.timestep_spacing, ("leading", "trailing", "linspace"))
        check_choice("scheduler", "thresholding", self.thresholding, (False,))
        check_choice("scheduler", "rescale_betas_zero_snr", self.rescale_betas_zero_snr, (False,))
        if self.trained_betas is not None:
            raise ConfigError("scheduler: unsupported trained_betas (dalle computes the betas from beta_schedule)")
        if self.num_train_timesteps < 2:
            raise ConfigError(f"scheduler: num_train_timesteps must be at least 2, got {self.num_train_timesteps}")


def learns_variance(config: DDPMConfig) -> bool:
    """Whether the step reads the model's variance channels, i.e. takes 2C channels [ε | variance values] rather
    than C. The Kandinsky pipeline drops the variance half before the step exactly when this is False."""
    return config.variance_type in ("learned", "learned_range")


def noise_schedule(config: DDPMConfig) -> NoiseSchedule:
    """The float32 CPU tables β_t and ᾱ_t = Π_{s<=t} (1 - β_s) (DDPM §2, eq. 4), bit-identical to the reference's.

    - "linear": β evenly spaced from beta_start to beta_end (DDPM §4), `torch.linspace` in float32;
    - "scaled_linear": the square of √beta_start … √beta_end evenly spaced in float32 (latent diffusion);
    - "squaredcos_cap_v2": the cosine schedule of Improved DDPM eq. 17, the one `schedule.noise_schedule` computes;
    - "sigmoid": beta_start + (beta_end - beta_start) · sigmoid(s) for s evenly spaced over [-6, 6] (GeoDiff).
    1 - β and the cumulative product are taken in float32, as the reference does.
    """
    n = config.num_train_timesteps
    start, end = config.beta_start, config.beta_end
    if config.beta_schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32, device="cpu")
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32, device="cpu") ** 2
    elif config.beta_schedule == "squaredcos_cap_v2":
        betas = schedule.noise_schedule(schedule.SchedulerConfig(num_train_timesteps=n)).betas
    else:
        betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float32, device="cpu")) * (end - start) + start
    return NoiseSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


def _trailing(num_train: int, n: int) -> list[float]:
    """The values of NumPy's `arange(num_train, 0, -num_train / n)` in float64, computed as NumPy computes them:
    the length is ceil(-num_train / -ratio); the first value is num_train, the second num_train - ratio, and every
    later one start + i · delta with delta = (second - start), which is not always bit-equal to -ratio."""
    ratio = num_train / n
    length = math.ceil((0 - num_train) / -ratio)
    start = float(num_train)
    second = start - ratio
    delta = second - start
    return ([start, second] + [start + i * delta for i in range(2, length)])[:length]


def timesteps(num_inference_steps: int, config: DDPMConfig) -> list[int]:
    """The descending timesteps of `num_inference_steps` steps, as `DDPMScheduler.set_timesteps(n)` spaces them.

    With T = num_train_timesteps (rounding is half to even, as NumPy's):
    - "leading": t_i = i · (T // n) + steps_offset for i = n-1, ..., 0 (Kandinsky: T // n · i + 1, ending at t = 1);
    - "trailing": round(T - i · T/n) - 1 for i = 0, 1, ... while the value stays above 0 (NumPy's float `arange`,
      reproduced to the bit), so sampling starts at T - 1;
    - "linspace": round(i · (T-1)/(n-1)) for i = n-1, ..., 0, the top one exactly T - 1 (a single step is t = 0).
    steps_offset applies to "leading" only, as in the reference.

    Raises `SchedulerError` unless 1 <= num_inference_steps <= T, and where the reference's timesteps leave
    0 … T-1: steps_offset can push a "leading" timestep past T - 1 (the reference then fails indexing its tables),
    and for some n (61, 103, 121, ... of T = 1000) the float `arange` of "trailing" overshoots and the reference
    gets n + 1 timesteps ending with t = -1 (it would then run an extra step with the table's last entry as ᾱ_t).
    """
    n, total = num_inference_steps, config.num_train_timesteps
    if not 1 <= n <= total:
        raise SchedulerError(f"the DDPM scheduler needs between 1 and {total} inference steps, got {n}")
    if config.timestep_spacing == "leading":
        ratio = total // n
        steps = [i * ratio + config.steps_offset for i in reversed(range(n))]
    elif config.timestep_spacing == "trailing":
        steps = [round(v) - 1 for v in _trailing(total, n)]
    elif n == 1:
        steps = [0]
    else:
        ratio = (total - 1) / (n - 1)
        steps = [total - 1] + [round(i * ratio) for i in reversed(range(n - 1))]
    if not 0 <= steps[-1] <= steps[0] < total:
        raise SchedulerError(
            f"{n} inference steps with {config.timestep_spacing} spacing and steps_offset {config.steps_offset} give "
            f"timesteps from {steps[0]} to {steps[-1]}, outside the training timesteps 0 to {total - 1}"
        )
    return steps


def step(
    model_output: Tensor,
    t: int,
    prev_t: int,
    x: Tensor,
    tables: NoiseSchedule,
    config: DDPMConfig,
    noise: Tensor | None = None,
) -> Tensor:
    """One ancestral step x_t -> x_{prev_t}: a sample of the DDPM posterior q(x_{prev_t} | x_t, x_0 = predicted x_0).

    - `t`: the current timestep; `prev_t` < t the next one in `timesteps(...)`, or -1 after the last step, where
      ᾱ_{-1} = 1 (the clean sample). The step's own α = ᾱ_t / ᾱ_{prev_t} and β = 1 - α are always recomputed
      from the float32 ᾱ table, for adjacent timesteps too (unlike unCLIP's `sampler.step`).
    - predicted x_0: (x_t - √(1-ᾱ_t) ε) / √ᾱ_t for "epsilon" (DDPM eq. 15), the model output for "sample", and
      √ᾱ_t x_t - √(1-ᾱ_t) v for "v_prediction" (Salimans & Ho 2022, §4); clamped to ±clip_sample_range when
      clip_sample.
    - mean μ = √ᾱ_{prev_t} β / (1-ᾱ_t) · x_0 + √α (1-ᾱ_{prev_t}) / (1-ᾱ_t) · x_t (DDPM eq. 7).
    - standard deviation σ, with β̃ = (1-ᾱ_{prev_t}) / (1-ᾱ_t) · β (DDPM eq. 7) clamped at 1e-20:
      "fixed_small" √β̃ and "fixed_large" √β (DDPM §3.2, σ² = β̃ or β); "fixed_small_log" exp(½ log β̃);
      "learned" √values (the model predicts σ² itself); "learned_range" exp(½ (f log β + (1-f) log β̃)) with
      f = (values + 1) / 2 (Improved DDPM eq. 15). The values are the second half of model_output's 2C channels.
    - returns μ + σ · noise, or μ at t = 0. `noise` (standard normal, x's shape) must be given exactly when
      `needs_noise(t)`.

    `x` is (B, C, ...) in any float dtype on any device; `model_output` is (B, C, ...), or (B, 2C, ...) when
    `learns_variance(config)`. The result has x's shape and the dtype promotion of model_output with x.
    """
    learned = config.variance_type if learns_variance(config) else None
    model_output, variance_values = checked_output(model_output, t, prev_t, x, config.num_train_timesteps, noise,
                                                   learned)

    # 0-d float32 CPU scalars
    alpha_bar = tables.alpha_bar(t)
    alpha_bar_prev = tables.alpha_bar(prev_t)
    one_minus_alpha_bar = 1 - alpha_bar
    one_minus_alpha_bar_prev = 1 - alpha_bar_prev
    alpha = alpha_bar / alpha_bar_prev
    beta = 1 - alpha

    if config.prediction_type == "epsilon":
        x0 = (x - one_minus_alpha_bar**0.5 * model_output) / alpha_bar**0.5
    elif config.prediction_type == "sample":
        x0 = model_output
    else:
        x0 = alpha_bar**0.5 * x - one_minus_alpha_bar**0.5 * model_output
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)

    x0_coeff = alpha_bar_prev**0.5 * beta / one_minus_alpha_bar
    xt_coeff = alpha**0.5 * one_minus_alpha_bar_prev / one_minus_alpha_bar
    mean = x0_coeff * x0 + xt_coeff * x
    if noise is None:
        return mean

    posterior_variance = (one_minus_alpha_bar_prev / one_minus_alpha_bar * beta).clamp(min=1e-20)  # β̃
    if config.variance_type == "fixed_small":
        std = posterior_variance**0.5
    elif config.variance_type == "fixed_small_log":
        std = (0.5 * posterior_variance.log()).exp()
    elif config.variance_type == "fixed_large":
        std = beta**0.5
    elif config.variance_type == "learned":
        std = variance_values**0.5
    else:
        frac = (variance_values + 1) / 2
        std = (0.5 * (frac * beta.log() + (1 - frac) * posterior_variance.log())).exp()
    return mean + std * noise


def sample(
    denoise: Denoiser,
    x: Tensor,
    steps: list[int],
    tables: NoiseSchedule,
    config: DDPMConfig,
    noise_fn: NoiseFn,
    on_step: OnStep | None = None,
) -> Tensor:
    """Run the ancestral sampler from x = x_T over `steps` (from `timesteps(...)`) and return the final sample.

    The same contract as `sampler.sample`: at step i (timestep t = steps[i]) the loop calls `denoise(x, t, i)` for
    the model output (guided already, and cut to the C channels of ε unless `learns_variance(config)`), then
    `noise_fn(i)` if `needs_noise(t)`, in that order, which is the order the reference draws its random numbers in;
    the noisy steps are the first ones (i = 0, 1, ...), all n of them when the last timestep is above 0.
    `on_step(i, t, x)` sees each new sample. The loop itself reads nothing back from the device.
    """
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        model_output = denoise(x, t, i)
        noise = noise_fn(i) if needs_noise(t) else None
        x = step(model_output, t, prev_t, x, tables, config, noise)
        if on_step is not None:
            on_step(i, t, x)
    return x


def add_noise(x0: Tensor, noise: Tensor, t: int | Sequence[int], tables: NoiseSchedule) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε for the given noise ε: a sample of the forward process
    q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) (DDPM eq. 4), as `DDPMScheduler.add_noise` computes it.

    `x0` and `noise` are (B, ...); `t` is one timestep for the whole batch or one per image (B of them). As the
    reference's `add_noise` does, the ᾱ table is moved to x0's device and cast to x0's dtype *before* the square
    roots, so a float16 x0 gets float16 coefficients. The result has x0's shape and dtype.
    """
    batch = x0.shape[0]
    per_image = [t] * batch if isinstance(t, int) else list(t)
    if len(per_image) != batch:
        raise SchedulerError(f"add_noise needs one timestep or {batch}, got {len(per_image)}")
    last = tables.alphas_cumprod.shape[0] - 1
    if not all(0 <= s <= last for s in per_image):
        raise SchedulerError(f"add_noise needs timesteps between 0 and {last}, got {per_image}")
    alphas_cumprod = tables.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    alpha_bar = alphas_cumprod[torch.tensor(per_image, device=x0.device)].view(batch, *(1,) * (x0.dim() - 1))
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise
