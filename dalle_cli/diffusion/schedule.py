"""The unCLIP noise schedule: config, cosine betas and the inference timestep spacing.

Karlo's three stages (prior, decoder, super-resolution) are DDPMs with the cosine schedule of Nichol & Dhariwal,
"Improved Denoising Diffusion Probabilistic Models" (2021), sampled on a subset of the training timesteps. This file
holds the numbers only; `sampler.py` holds the step. Both mirror diffusers' `UnCLIPScheduler` so that the results
equal the reference's: the betas are computed in Python floats (float64) and stored as float32, and every per-step
coefficient is computed from these float32 tables, exactly as the reference does.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..configs import check_choice
from ..errors import ConfigError, SchedulerError


@dataclass(frozen=True)
class SchedulerConfig:
    """One stage's `scheduler_config.json`; the defaults are the reference `UnCLIPScheduler`'s."""

    num_train_timesteps: int = 1000
    variance_type: str = "fixed_small_log"  # "fixed_small_log" (posterior variance) | "learned_range" (model picks)
    clip_sample: bool = True  # clamp the predicted x_0 to [-clip_sample_range, clip_sample_range]
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"  # the model predicts the noise ("epsilon") or x_0 itself ("sample")
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        check_choice("scheduler", "variance_type", self.variance_type, ("fixed_small_log", "learned_range"))
        check_choice("scheduler", "prediction_type", self.prediction_type, ("epsilon", "sample"))
        check_choice("scheduler", "beta_schedule", self.beta_schedule, ("squaredcos_cap_v2",))
        if self.num_train_timesteps < 2:
            raise ConfigError(f"scheduler: num_train_timesteps must be at least 2, got {self.num_train_timesteps}")


@dataclass(frozen=True)
class NoiseSchedule:
    """The float32 CPU tables a step reads: `betas[t]` and `alphas_cumprod[t]` (ᾱ_t), both of shape (T,).

    Both are needed: a step between adjacent timesteps (t-1 after t) uses the stored `betas[t]`, which is not
    bit-equal to 1 - ᾱ_t / ᾱ_{t-1} recomputed from the float32 cumulative product.
    """

    betas: Tensor
    alphas_cumprod: Tensor

    def alpha_bar(self, t: int) -> Tensor:
        """ᾱ_t as a 0-d float32 CPU tensor, with ᾱ_{-1} = 1: the clean sample after the last step."""
        return self.alphas_cumprod[t] if t >= 0 else self.alphas_cumprod.new_ones(())


def _alpha_bar(s: float) -> float:
    """Improved DDPM eq. (17) before normalisation: f(s) = cos²((s + 0.008) / 1.008 · π/2) for s = t/T in [0, 1]."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def noise_schedule(config: SchedulerConfig) -> NoiseSchedule:
    """The cosine schedule β_t = min(1 - f((t+1)/T) / f(t/T), 0.999) (Improved DDPM eq. 17), ᾱ_t = Π_{s<=t} (1 - β_s).

    The betas are computed in float64 and rounded to float32; 1 - β and the cumulative product are then taken in
    float32, as the reference does, so the tables are bit-identical to `UnCLIPScheduler.betas` / `.alphas_cumprod`.
    The tables live on the CPU: the step reads 0-d scalars from them, which mix with tensors on any device without
    a host-device copy.
    """
    n = config.num_train_timesteps
    betas = [min(1 - _alpha_bar((i + 1) / n) / _alpha_bar(i / n), 0.999) for i in range(n)]
    betas_f32 = torch.tensor(betas, dtype=torch.float32)
    return NoiseSchedule(betas=betas_f32, alphas_cumprod=torch.cumprod(1.0 - betas_f32, dim=0))


def timesteps(num_inference_steps: int, config: SchedulerConfig) -> list[int]:
    """The descending timesteps sampled in `num_inference_steps` steps, Karlo's spacing (as `set_timesteps` does).

    The n steps are spread evenly over the whole training range *including both ends*: t_i = round(i · (T-1)/(n-1))
    for i = n-1, ..., 0 (round half to even), so sampling always starts from the pure-noise timestep T-1 and always
    ends with the final denoising step at t = 0. That is why a single step is not allowed: one timestep cannot be
    both T-1 and 0 (the reference divides by n - 1 = 0 there). More steps than training timesteps are refused too:
    the spacing would then repeat timesteps, and a step from t to t is a zero-length step whose learned-range
    variance is log(0).

    Raises `SchedulerError` unless 2 <= num_inference_steps <= num_train_timesteps.
    """
    last = config.num_train_timesteps - 1
    if not 2 <= num_inference_steps <= config.num_train_timesteps:
        raise SchedulerError(
            f"the unCLIP scheduler needs between 2 and {config.num_train_timesteps} inference steps, "
            f"got {num_inference_steps} (the steps must include both the pure-noise timestep {last} and 0)"
        )
    ratio = last / (num_inference_steps - 1)
    return [round(i * ratio) for i in reversed(range(num_inference_steps))]


def strength_steps(steps: list[int], strength: float | None) -> list[int]:
    """The steps an edit at `strength` (SDEdit, Meng et al. 2022) runs from the picture noised to the first of them:
    the last int(strength x len(steps)), as diffusers' image-to-image `get_timesteps` counts them, and at least one
    (where the reference would run none and fail); all of them without a strength."""
    if strength is None:
        return steps
    return steps[len(steps) - max(1, min(int(strength * len(steps)), len(steps))):]
