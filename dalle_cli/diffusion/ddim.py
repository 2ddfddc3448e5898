"""DDIM sampling and its inversion as pure functions over tensors and a denoiser callable, for both families.

    config = config_for(scheduler_config)  # a unCLIP `SchedulerConfig` or a Kandinsky `DDPMConfig`
    steps = timesteps(50, scheduler_config)  # that family's own spacing: `schedule.timesteps` / `ddpm.timesteps`
    x_T = invert(denoise, x_0, steps, tables, config)  # x_0 -> x_{steps[0]}
    x_0 = sample(denoise, x_T, steps, tables, config)  # back again (η = 0)

Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (2021), on the tables of either family
(`schedule.noise_schedule` or `ddpm.noise_schedule`) and on the timesteps that family's sampler uses; the paper's
α_t is ᾱ_t (`alphas_cumprod[t]`) here. For the same inputs a step is bit-equal, in float32 (and with the same
promotions in float16 / bfloat16), to diffusers' `DDIMScheduler.step` and an inversion step to
`DDIMInverseScheduler.step`: the per-step coefficients are 0-d float32 CPU tensors read from the tables and
combined with the sample in the reference's order of operations.

Where the timesteps come from. A step here goes between two timesteps the caller names: from t to the next one of
`steps`, or to the clean sample (-1) after the last. diffusers' DDIM schedulers instead derive the other end as
t ∓ num_train_timesteps // num_inference_steps, which is the next timestep only for evenly spaced ("leading")
timesteps; for unCLIP's spacing (steps of 41 and 42 in 25 steps) or "trailing" with n not dividing T the reference
would step between timesteps that are not the ones sampled. The math of one step is the same either way.

The clean end, ᾱ_{-1} = 1. A step to prev_t = -1 (and an inversion step from t = -1) uses ᾱ = 1: the sample
there is x_0 itself. That is diffusers' `set_alpha_to_one=True` (`final_alpha_cumprod` = `initial_alpha_cumprod`
= 1). Its `set_alpha_to_one=False` uses ᾱ_0 instead, which is a last step to prev_t = 0 (an inversion from t = 0):
`step` and `invert_step` take that, the loops always end (start) at -1.

Randomness is passed in, never drawn here: with η > 0 a step takes one standard-normal tensor exactly when it adds
noise (`needs_noise`). Nothing here reads a device tensor back to the host. This module never imports models.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from ..configs import check_choice
from ..errors import SchedulerError
from .ddpm import DDPMConfig
from .sampler import Denoiser, NoiseFn, OnStep
from .schedule import NoiseSchedule, SchedulerConfig

__all__ = ["DDIMConfig", "clean_step", "config_for", "invert", "invert_step", "invertible", "needs_noise", "noises",
           "predict", "prediction_channels", "sample", "step"]

CAPPED_BETA = 0.999  # the cosine schedule clips β here (Improved DDPM §3.2): its last timestep is singular


@dataclass(frozen=True)
class DDIMConfig:
    """How to read a model output: what the model predicts, whether the predicted x_0 is clamped, and whether the
    output carries learned-variance channels that DDIM does not use.

    - prediction_type: "epsilon" (the noise ε), "sample" (x_0) or "v_prediction" (v = √ᾱ ε - √(1-ᾱ) x_0).
    - clip_sample: clamp the predicted x_0 to [-clip_sample_range, clip_sample_range].
    - learned_variance: the model output is (B, 2C, ...) = [ε | variance values], as unCLIP's learned-range decoder
      returns it (and `guidance.guide(..., learned_variance=True)` keeps it); only the first C channels are read.
      DDIM's variance is σ_t(η), never the model's.
    """

    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    learned_variance: bool = False

    def __post_init__(self) -> None:
        check_choice("ddim", "prediction_type", self.prediction_type, ("epsilon", "sample", "v_prediction"))


def config_for(config: SchedulerConfig | DDPMConfig) -> DDIMConfig:
    """The DDIM reading of a family's own scheduler config: its prediction type and clipping, and whether its model
    outputs carry variance channels (unCLIP "learned_range"; Kandinsky's "learned" / "learned_range")."""
    return DDIMConfig(
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
        learned_variance=config.variance_type in ("learned", "learned_range"),
    )


def invertible(steps: list[int], tables: NoiseSchedule) -> list[int]:
    """A family's descending `steps` with the first lowered past the timesteps whose β is capped at 0.999.

    The cosine schedule caps β where ᾱ would reach 0 (Improved DDPM §3.2), so at unCLIP's t = 999 ᾱ is 2.4e-9: a
    step from there reads x_0 = (x - √(1-ᾱ) ε) / √ᾱ, multiplying any difference between the noise the inversion
    saw and the one sampling sees by 2 · 10⁴. One timestep lower ᾱ is 1000 times larger and x_T is still pure noise
    to six digits (√ᾱ = 0.0016). Schedules without a capped β (Kandinsky's linear one) are returned unchanged.
    """
    top = steps[0]
    while top > 0 and float(tables.betas[top]) >= CAPPED_BETA:
        top -= 1
    if len(steps) > 1 and top <= steps[1]:
        raise SchedulerError(f"DDIM's timesteps {steps[:2]}... leave no invertible start above {steps[1]}")
    return [top, *steps[1:]]


def noises(steps: list[int], eta: float) -> int:
    """How many noise tensors `sample` takes over `steps` at η: one per step that `needs_noise`."""
    return sum(needs_noise(prev_t, eta) for prev_t in [*steps[1:], -1])


def needs_noise(prev_t: int, eta: float) -> bool:
    """Whether a step to `prev_t` adds noise: η > 0 and prev_t is not the clean end -1, where σ_t(η) = 0.

    diffusers draws a noise tensor at that last step too (and adds 0 times it): a caller that reproduces a
    reference generator stream with η > 0 draws one more tensor there and drops it.
    """
    return eta > 0 and prev_t >= 0


def prediction_channels(model_output: Tensor, x: Tensor, config: DDIMConfig) -> Tensor:
    """The C channels of the prediction: all of model_output, or its first half for a learned-variance model."""
    channels = x.shape[1]
    want = 2 * channels if config.learned_variance else channels
    if model_output.shape[1] != want:
        kind = "learned-variance model" if config.learned_variance else "model"
        raise SchedulerError(f"a {kind} must output {want} channels for a {channels}-channel sample, "
                             f"got {model_output.shape[1]}")
    return model_output[:, :channels] if config.learned_variance else model_output  # (B, C, ...)


def predict(model_output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
            config: DDIMConfig) -> tuple[Tensor, Tensor]:
    """(x_0, ε) predicted from x = x_t at the noise level α = √ᾱ, σ = √(1-ᾱ) (0-d float32 tensors, which the caller
    rounds as its reference does), x_0 clamped if asked.

    DDIM eq. 9: x_t = α x_0 + σ ε, solved for whichever of the two the model does not predict; for v,
    x_0 = α x_t - σ v and ε = α v + σ x_t (Salimans & Ho 2022, §4). ε is taken before the clamp.
    """
    if config.prediction_type == "epsilon":
        x0 = (x - sigma * model_output) / alpha
        eps = model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (x - alpha * x0) / sigma
    else:
        x0 = alpha * x - sigma * model_output
        eps = alpha * model_output + sigma * x
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0, eps


def step(
    model_output: Tensor,
    t: int,
    prev_t: int,
    x: Tensor,
    tables: NoiseSchedule,
    config: DDIMConfig,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM step x_t -> x_{prev_t} (DDIM eq. 12), deterministic at η = 0.

    - `t`: the current timestep; `prev_t` < t the next one of the sampled timesteps, or -1 after the last, where
      ᾱ_{-1} = 1 (the clean sample). The step may skip any number of timesteps (DDIM §4.2).
    - x_0 and ε are predicted from the model output (`DDIMConfig`, DDIM eq. 9), x_0 clamped when clip_sample.
    - σ_t(η) = η √((1-ᾱ_{prev_t}) / (1-ᾱ_t)) √(1 - ᾱ_t / ᾱ_{prev_t}) (DDIM eq. 16): η = 0 is DDIM, η = 1 the DDPM
      posterior's standard deviation (σ = 0 at prev_t = -1 for any η).
    - returns √ᾱ_{prev_t} x_0 + √(1 - ᾱ_{prev_t} - σ²) ε + σ · noise (DDIM eq. 12); `noise` (standard normal, x's
      shape) must be given exactly when `needs_noise(prev_t, eta)`.

    `x` is (B, C, ...) in any float dtype on any device; `model_output` is (B, C, ...), or (B, 2C, ...) when
    `config.learned_variance`. η must lie in [0, 1] (beyond 1 the direction term's root can turn negative). The
    result has x's shape and the dtype promotion of model_output with x.
    """
    last = tables.alphas_cumprod.shape[0] - 1
    if not 0 <= t <= last or not -1 <= prev_t < t:
        raise SchedulerError(f"a DDIM step needs -1 <= prev_t < t <= {last}, got t={t}, prev_t={prev_t}")
    if not 0 <= eta <= 1:
        raise SchedulerError(f"DDIM's eta must be between 0 and 1, got {eta}")
    if (noise is not None) != needs_noise(prev_t, eta):
        takes = "one noise tensor" if needs_noise(prev_t, eta) else "no noise"
        raise SchedulerError(f"the DDIM step from t={t} to {prev_t} with eta={eta} takes {takes}")
    model_output = prediction_channels(model_output, x, config)

    # 0-d float32 CPU scalars
    alpha_bar = tables.alpha_bar(t)
    alpha_bar_prev = tables.alpha_bar(prev_t)
    x0, eps = predict(model_output, x, alpha_bar**0.5, (1 - alpha_bar) ** 0.5, config)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    std = eta * variance**0.5  # σ_t(η)
    x_prev = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - std**2) ** 0.5 * eps
    return x_prev if noise is None else x_prev + std * noise


def invert_step(
    model_output: Tensor,
    t: int,
    next_t: int,
    x: Tensor,
    tables: NoiseSchedule,
    config: DDIMConfig,
) -> Tensor:
    """One deterministic DDIM inversion step x_t -> x_{next_t}: eq. 12 at η = 0 run from t up to next_t > t.

    - `t` is -1 for the clean sample x_0 (ᾱ = 1) or a timestep; `next_t` > t the next timestep up.
    - x_0 and ε are predicted from x = x_t at ᾱ_t (`DDIMConfig`), x_0 clamped when clip_sample; returns
      √ᾱ_{next_t} x_0 + √(1-ᾱ_{next_t}) ε. The inversion rests on the ODE view (DDIM §4.3, eq. 14): ε should be the
      model's at the step's upper end, which is unknown; `invert` evaluates the model on x_t at timestep next_t.
    - from the clean sample, ε is undefined for a model that predicts x_0 ((x - x_0) / √(1-ᾱ) with ᾱ = 1), so
      "sample" prediction is refused at t = -1 (the reference returns inf / NaN there).

    Shapes and dtypes as in `step`.
    """
    last = tables.alphas_cumprod.shape[0] - 1
    if not -1 <= t < next_t <= last:
        raise SchedulerError(f"a DDIM inversion step needs -1 <= t < next_t <= {last}, got t={t}, next_t={next_t}")
    if t == -1 and config.prediction_type == "sample":
        raise SchedulerError("DDIM inversion cannot start from the clean sample with a model that predicts x_0 "
                             "(the noise is undefined there); start from t=0")
    model_output = prediction_channels(model_output, x, config)

    # 0-d float32 CPU scalars
    alpha_bar_next = tables.alpha_bar(next_t)
    alpha_bar = tables.alpha_bar(t)
    x0, eps = predict(model_output, x, alpha_bar**0.5, (1 - alpha_bar) ** 0.5, config)
    return alpha_bar_next**0.5 * x0 + (1 - alpha_bar_next) ** 0.5 * eps


def sample(
    denoise: Denoiser,
    x: Tensor,
    steps: list[int],
    tables: NoiseSchedule,
    config: DDIMConfig,
    eta: float = 0.0,
    noise_fn: NoiseFn | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Run DDIM from x = x_{steps[0]} down `steps` (descending, a family's `timesteps(...)`) to the clean sample.

    Step i (t = steps[i]) goes to prev_t = steps[i + 1], or to -1 after the last one. The loop calls
    `denoise(x, t, i)` for the model output (guided already), then `noise_fn(i)` if `needs_noise(prev_t, eta)`,
    in that order (the reference's order); `noise_fn` is needed only when η > 0. `on_step(i, t, x)` sees each new
    sample. The loop itself reads nothing back from the device.
    """
    if eta > 0 and noise_fn is None:
        raise SchedulerError(f"DDIM with eta={eta} needs a noise_fn")
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        model_output = denoise(x, t, i)
        noise = noise_fn(i) if noise_fn is not None and needs_noise(prev_t, eta) else None
        x = step(model_output, t, prev_t, x, tables, config, eta, noise)
        if on_step is not None:
            on_step(i, t, x)
    return x


def invert(
    denoise: Denoiser,
    x0: Tensor,
    steps: list[int],
    tables: NoiseSchedule,
    config: DDIMConfig,
    on_step: OnStep | None = None,
    clean_at: int = -1,
    refine: int = 0,
    clean_x0: bool = False,
) -> Tensor:
    """Invert the clean sample x0 up the same `steps` `sample` walks down; returns x_{steps[0]}.

    `clean_at` is the timestep x0 stands at: -1 (ᾱ = 1, the clean end) or 0 (ᾱ_0, diffusers' inverse scheduler
    with `set_alpha_to_one=False`), which a model that predicts x_0 needs, since its noise is undefined at ᾱ = 1
    (`invert_step`). When `steps` end at `clean_at`, x0 already stands at the last timestep and the first inversion
    step is skipped (sampling's last step, 0 -> -1, then maps x_0 at t = 0 to the predicted clean sample).

    `refine` corrects each step's result that many times, so that the DDIM step back down from it lands on the
    sample it came from: x_next += √(ᾱ_next / ᾱ_t) · (x_t - step(denoise(x_next), next_t -> t)). Plain inversion
    reads the model at the lower-noise sample, and its error compounds; the correction makes `sample` at η = 0 give
    x0 back to within the model's own consistency. The gain is the inverse slope of that step for a model whose x_0
    follows the sample's clean part (x̂_0 ≈ x / √ᾱ): unpreconditioned fixed-point iteration diverges where the step
    multiplies the model's x_0 error (an x_0-predicting model near t = 0, by √(1-ᾱ_next) / √(1-ᾱ_0) ≈ 17 on the
    cosine schedule), this one contracts. Each correction costs one more model call. `refine` = 0 is
    `DDIMInverseScheduler`.

    `clean_x0` takes the first step with x̂_0 = x0 itself and ε = 0, x_next = √ᾱ_next x0, with no model call. For
    a model that predicts x_0 the plain first step multiplies the model's x_0 error by √(1-ᾱ_next) / √(1-ᾱ_t) and
    its correction stalls. That start is then corrected `refine` times against all of sampling's steps below it
    (`clean_step`), since those steps, the guided x̂_0 at t = 0 included, are what give the picture back.

    The timesteps are `sample`'s in reverse, pair for pair. With n = len(steps) and steps[n] = -1 (the clean
    sample), the inversion runs i = n-1, n-2, ..., 0; step i goes from steps[i + 1] up to steps[i], the exact
    reverse of sampling step i, and evaluates the model as `denoise(x, steps[i], i)`: at the step's upper end,
    with the index that timestep has in `sample`. So the model is called at the same n (t, i) as in sampling, only
    on the lower-noise sample. This is `DDIMInverseScheduler`'s convention (its timesteps are the sampler's in
    ascending order and the model gets the step's upper timestep). `invert` then `sample` at η = 0 gives x0 back to
    float error when the model's ε at timestep t does not depend on the sample (an exact predictor); for a real
    model ε(x_{steps[i+1]}, steps[i]) only approximates the ε(x_{steps[i]}, steps[i]) that sampling will use.
    `on_step(i, t, x)` sees each new x_t. The loop itself reads nothing back from the device.
    """
    if refine < 0:
        raise SchedulerError(f"DDIM inversion's refine must be 0 or more, got {refine}")
    if clean_at not in (-1, 0):
        raise SchedulerError(f"DDIM inversion starts from timestep -1 or 0, got {clean_at}")
    x = x0
    for i in reversed(range(len(steps))):
        t = steps[i + 1] if i + 1 < len(steps) else clean_at
        next_t = steps[i]
        if next_t == t:  # x0 stands at the last timestep already
            if on_step is not None:
                on_step(i, next_t, x)
            continue
        if clean_x0 and x is x0:
            x = clean_step(lambda y, timestep, k: denoise(y, timestep, i + k), x0, steps[i:], tables, config, refine)
            if on_step is not None:
                on_step(i, next_t, x)
            continue
        x_next = invert_step(denoise(x, next_t, i), t, next_t, x, tables, config)
        gain = (tables.alpha_bar(next_t) / tables.alpha_bar(t)) ** 0.5
        for _ in range(refine):
            x_next = x_next + gain * (x - step(denoise(x_next, next_t, i), next_t, t, x_next, tables, config))
        x = x_next
        if on_step is not None:
            on_step(i, next_t, x)
    return x


def clean_step(denoise: Denoiser, x0: Tensor, steps: list[int], tables: NoiseSchedule, config: DDIMConfig,
               refine: int) -> Tensor:
    """The x_{steps[0]} from which `sample` down `steps` (its calls numbered from 0) gives back the clean sample x0,
    for a model that predicts x_0: the first step of `invert` with `clean_x0`.

    It starts at x = √ᾱ x0 (x̂_0 = x0, ε = 0, ᾱ = ᾱ_{steps[0]}) and corrects it `refine` times by
    x += √ᾱ (x0 - sample(x)): the gain is the inverse slope of sampling for a model whose x_0 follows the sample's
    clean part (x̂_0 ≈ x / √ᾱ). The model's x̂_0 at low noise is not that, and on some samples the iteration
    diverges, so each sample keeps its iterate whose result lies nearest x0 (mean squared error; the earlier one on
    a tie), never worse than the start. Costs (refine + 1) · len(steps) model calls when refine > 0, none at 0.
    Shapes as x0's.
    """
    gain = tables.alpha_bar(steps[0]) ** 0.5  # √ᾱ: the start's scale and the correction's gain
    x = gain * x0
    if refine == 0:
        return x
    best, best_error = x, None
    for k in range(refine + 1):
        residual = x0 - sample(denoise, x, steps, tables, config)
        error = residual.flatten(1).pow(2).mean(1)  # [B]
        if best_error is not None:
            nearer = error < best_error
            best = torch.where(nearer.view(-1, *[1] * (x.dim() - 1)), x, best)
            error = torch.minimum(error, best_error)
        best_error = error
        if k < refine:
            x = x + gain * residual
    return best
