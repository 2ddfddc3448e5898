"""DPM-Solver++(2M) sampling as pure functions over tensors and a denoiser callable, for both families.

    config = ddim.config_for(scheduler_config)  # the same reading of the model output as DDIM's
    steps = timesteps(20, scheduler_config)  # that family's own spacing: `schedule.timesteps` / `ddpm.timesteps`
    x_0 = sample(denoise, x_T, steps, tables, config)  # deterministic, one model call per step

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(2022): the multistep second-order solver of the diffusion ODE in its data-prediction form (Algorithm 2, with the
midpoint choice of the first-order correction), on the tables of either family (`schedule.noise_schedule` or
`ddpm.noise_schedule`). With α_t = √ᾱ_t, σ_t = √(1-ᾱ_t) and the half log-SNR λ_t = log α_t - log σ_t, the solver
integrates x_0 = x̂_0(x_t, t), the model's predicted clean sample, over λ: a step of h = λ_{prev_t} - λ_t is

    x_{prev_t} = (σ_{prev_t} / σ_t) x_t - α_{prev_t} (e^{-h} - 1) D0 - ½ α_{prev_t} (e^{-h} - 1) D1,

with D0 = x̂_0 at t and D1 = (x̂_0 at t - x̂_0 of the step before) / r0, r0 = (λ_t - λ_{t_before}) / h. Without D1
this is DPM-Solver++1, which is DDIM at η = 0. The first step has no step before and is first order; so is the
last one, to the clean sample (σ = 0, λ = ∞), which returns x̂_0 itself.

For the same inputs a step is bit-equal, in float32, to diffusers' `DPMSolverMultistepScheduler.step` with
`algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"` and `final_sigmas_type="zero"`. For that
α_t and σ_t are rounded as the reference rounds them: from the float32 ratio s = √((1-ᾱ_t)/ᾱ_t) (its `sigmas`), as
α_t = 1 / √(s² + 1) and σ_t = s α_t, which are √ᾱ_t and √(1-ᾱ_t) to a few ulps. Those few ulps matter: x̂_0 =
(x_t - σ_t ε) / α_t multiplies them by σ_t / α_t, 2 · 10⁴ at unCLIP's t = 999: with √ᾱ_t taken directly, the
first step from there lands about 1e-3 off the reference's (1e-5 to 1e-4 from t = 998; under 1e-6 everywhere on
Kandinsky's linear schedule).
The reference computes in float32 whatever the sample's dtype; here half-precision samples stay in their dtype.

Steps and model outputs follow `ddim`: a step goes from t to the next timestep of the caller's descending `steps`,
or to the clean sample -1 after the last (ᾱ_{-1} = 1); the model output is read with a `ddim.DDIMConfig`
(`ddim.prediction_channels`, `ddim.predict`), its x_0 clamped when clip_sample (the reference has no clamp, only
dynamic thresholding). The per-step coefficients are 0-d float32 CPU tensors read from the tables and combined with
the sample in the reference's order of operations.
Nothing here reads a device tensor back to the host. This module never imports models.
"""

import torch
from torch import Tensor

from ..errors import SchedulerError
from .ddim import DDIMConfig, predict, prediction_channels
from .sampler import Denoiser, OnStep
from .schedule import NoiseSchedule

__all__ = ["Previous", "sample", "step"]

Previous = tuple[Tensor, int]  # (x̂_0 predicted by the step before, that step's timestep t)


def _levels(tables: NoiseSchedule, t: int) -> tuple[Tensor, Tensor, Tensor]:
    """(α_t, σ_t, λ_t) at a timestep t >= 0 as 0-d float32 CPU tensors, rounded as the reference rounds them:
    s = √((1-ᾱ_t)/ᾱ_t), α_t = 1 / √(s² + 1) (= √ᾱ_t), σ_t = s α_t (= √(1-ᾱ_t)), λ_t = log α_t - log σ_t."""
    alpha_bar = tables.alpha_bar(t)
    ratio = ((1 - alpha_bar) / alpha_bar) ** 0.5  # σ_t / α_t
    alpha = 1 / ((ratio**2 + 1) ** 0.5)
    sigma = ratio * alpha
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


def step(
    model_output: Tensor,
    t: int,
    prev_t: int,
    x: Tensor,
    tables: NoiseSchedule,
    config: DDIMConfig,
    previous: Previous | None = None,
) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++ step x_t -> x_{prev_t}; returns (x_{prev_t}, this step's x̂_0), the x̂_0 for the next call.

    - `t`: the current timestep; `prev_t` < t the next one of the sampled timesteps, or -1 after the last, where
      ᾱ_{-1} = 1 (the clean sample). The step may skip any number of timesteps.
    - x̂_0 is predicted from the model output as DDIM reads it (`ddim.predict`, DDIM eq. 9), clamped when
      clip_sample; only the first C channels of a learned-variance output are read.
    - `previous`: (x̂_0, timestep) of the step before, whose timestep lies above t, or None. Given, the step is the
      2M update of the module docstring (Algorithm 2); None, it is first order (DPM-Solver++1 = DDIM at η = 0).
      A step to prev_t = -1 is first order either way and returns x̂_0 itself (σ_{-1} = 0).

    `x` is (B, C, ...) in any float dtype on any device; `model_output` is (B, C, ...), or (B, 2C, ...) when
    `config.learned_variance`; `previous`'s x̂_0 has x's shape. The results have x's shape and the dtype promotion
    of model_output with x.
    """
    last = tables.alphas_cumprod.shape[0] - 1
    if not 0 <= t <= last or not -1 <= prev_t < t:
        raise SchedulerError(f"a DPM-Solver++ step needs -1 <= prev_t < t <= {last}, got t={t}, prev_t={prev_t}")
    if previous is not None and not t < previous[1] <= last:
        raise SchedulerError(f"a DPM-Solver++ step from t={t} needs the step before at a timestep in "
                             f"({t}, {last}], got {previous[1]}")
    model_output = prediction_channels(model_output, x, config)

    # 0-d float32 CPU scalars
    alpha, sigma, lambda_t = _levels(tables, t)
    x0, _ = predict(model_output, x, alpha, sigma, config)  # D0, (B, C, ...)
    if prev_t == -1:
        return x0, x0
    alpha_prev, sigma_prev, lambda_prev = _levels(tables, prev_t)
    h = lambda_prev - lambda_t
    x0_coeff = alpha_prev * (torch.exp(-h) - 1.0)
    x_prev = (sigma_prev / sigma) * x - x0_coeff * x0
    if previous is not None:
        x0_before, t_before = previous
        r0 = (lambda_t - _levels(tables, t_before)[2]) / h
        x_prev = x_prev - 0.5 * x0_coeff * ((1.0 / r0) * (x0 - x0_before))  # D1 = (D0 - x̂_0 before) / r0
    return x_prev, x0


def sample(
    denoise: Denoiser,
    x: Tensor,
    steps: list[int],
    tables: NoiseSchedule,
    config: DDIMConfig,
    on_step: OnStep | None = None,
) -> Tensor:
    """Run DPM-Solver++(2M) from x = x_{steps[0]} down `steps` (descending, a family's `timesteps(...)`) to the clean
    sample; deterministic, it takes no noise.

    Step i (t = steps[i]) goes to prev_t = steps[i + 1], or to -1 after the last one; it calls `denoise(x, t, i)`
    once for the model output (guided already), so n steps make n model calls. The first step is first order, the
    others second order on the x̂_0 of the step before, except the last, which returns its x̂_0. `on_step(i, t, x)`
    sees each new sample. The loop itself reads nothing back from the device.
    """
    previous: Previous | None = None
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        x, x0 = step(denoise(x, t, i), t, prev_t, x, tables, config, previous)
        previous = (x0, t)
        if on_step is not None:
            on_step(i, t, x)
    return x
