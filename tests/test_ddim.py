"""DDIM and its inversion against diffusers' `DDIMScheduler` and `DDIMInverseScheduler`, on both families' tables.

The reference schedulers do not look the other end of a step up in their timesteps: `DDIMScheduler.step` steps from
t to t - num_train_timesteps // num_inference_steps, and `DDIMInverseScheduler.step(t)` from that value up to t.
That is the next timestep only for evenly spaced timesteps, not for unCLIP's spacing (41 or 42 apart in 25 steps).
So to compare a step between two of *our* timesteps, t and t - d, the tests build the reference with its tables
from `trained_betas` (our float32 betas, so its ᾱ table is ours bit for bit) and with num_train_timesteps = d · k
and k inference steps, which makes its gap exactly d; k = T // d + 1 keeps num_train_timesteps - 1 >= T - 1, so the
inverse scheduler's clamp min(·, num_train_timesteps - 1) never binds. num_train_timesteps is read for nothing else
in a step. The loops are also checked with the reference's own `set_timesteps` where its spacing is ours (Kandinsky's
"leading" one).
"""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from dalle_cli.configs import from_config, read_json
from dalle_cli.diffusion import ddpm, schedule
from dalle_cli.diffusion.ddim import (DDIMConfig, clean_step, config_for, invert, invert_step, invertible,
                                      needs_noise, sample, step)
from dalle_cli.errors import ConfigError, SchedulerError
from reference import KARLO, REFERENCE

KANDINSKY_RAW = read_json(REFERENCE / "kandinsky-community__kandinsky-2-2-decoder" / "scheduler"
                          / "scheduler_config.SUPERSEDED-e5c52c4.json")
KANDINSKY = from_config(ddpm.DDPMConfig, KANDINSKY_RAW)  # linear betas, "leading" spacing, steps_offset 1
UNCLIP = schedule.SchedulerConfig()  # the cosine schedule of every Karlo stage
FAMILIES = {
    "unclip": (schedule.noise_schedule(UNCLIP), lambda n: schedule.timesteps(n, UNCLIP)),
    "kandinsky": (ddpm.noise_schedule(KANDINSKY), lambda n: ddpm.timesteps(n, KANDINSKY)),
}
PREDICTIONS = ("epsilon", "sample", "v_prediction")
STEP_COUNTS = (7, 25, 50)
SHAPE = (2, 4, 8, 8)  # (B, C, h, w)

_REFERENCES: dict[tuple, DDIMScheduler | DDIMInverseScheduler] = {}


def reference_for_gap(cls: type, family: str, gap: int, config: DDIMConfig, alpha_to_one: bool = True):
    """A `cls` (DDIMScheduler or DDIMInverseScheduler) on the family's tables whose step spans exactly `gap`
    timesteps (see the module docstring), reading the model output as `config` says."""
    key = (cls, family, gap, config, alpha_to_one)
    if key not in _REFERENCES:
        tables = FAMILIES[family][0]
        k = tables.betas.shape[0] // gap + 1
        reference = cls(num_train_timesteps=gap * k, trained_betas=tables.betas.tolist(),
                        prediction_type=config.prediction_type, clip_sample=config.clip_sample,
                        clip_sample_range=config.clip_sample_range, set_alpha_to_one=alpha_to_one)
        reference.set_timesteps(k)
        assert torch.equal(reference.alphas_cumprod, tables.alphas_cumprod)
        _REFERENCES[key] = reference
    return _REFERENCES[key]


def pairs(steps: list[int]) -> list[tuple[int, int, int]]:
    """(i, t, prev_t) of every sampling step: to the next timestep, or to -1 after the last one."""
    return [(i, t, steps[i + 1] if i + 1 < len(steps) else -1) for i, t in enumerate(steps)]


def model_output_for(x: torch.Tensor, config: DDIMConfig, generator: torch.Generator) -> torch.Tensor:
    """A random prediction of x's shape, wide enough to be clamped; plus variance values for a learned-variance
    model (which DDIM must ignore)."""
    output = torch.randn(x.shape, generator=generator) * 2 * config.clip_sample_range
    if config.learned_variance:
        output = torch.cat([output, torch.rand(x.shape, generator=generator) * 2 - 1], dim=1)
    return output.to(x.dtype)


def configs() -> list[DDIMConfig]:
    return [DDIMConfig(prediction_type=p, clip_sample=c, clip_sample_range=r)
            for p in PREDICTIONS for c, r in ((False, 1.0), (True, 1.0), (True, 5.0))]


CONFIGS = configs()
CONFIG_IDS = [f"{c.prediction_type}-{'clip' + str(c.clip_sample_range) if c.clip_sample else 'noclip'}"
              for c in CONFIGS]


# --- configs ---


def test_config_for_reads_each_family_config() -> None:
    karlo = {stage: from_config(schedule.SchedulerConfig,
                                read_json(KARLO / f"{stage}_scheduler" / "scheduler_config.json"))
             for stage in ("prior", "decoder", "super_res")}
    assert config_for(karlo["prior"]) == DDIMConfig("sample", clip_sample=True, clip_sample_range=5.0)
    assert config_for(karlo["decoder"]) == DDIMConfig("epsilon", clip_sample=True, learned_variance=True)
    assert config_for(karlo["super_res"]) == DDIMConfig("epsilon", clip_sample=True)
    assert config_for(KANDINSKY) == DDIMConfig("epsilon", clip_sample=False)
    assert config_for(ddpm.DDPMConfig(variance_type="learned")).learned_variance
    with pytest.raises(ConfigError, match="prediction_type"):
        DDIMConfig("x0")


# --- one step ---


@pytest.mark.parametrize("eta", (0.0, 0.5, 1.0))
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_step_equals_reference_step(family: str, config: DDIMConfig, eta: float) -> None:
    """Bit-equal to `DDIMScheduler.step` for every step of n-step runs on the family's timesteps, the reference
    given the same noise through `variance_noise` (it adds 0 times one at the last step, where we take none)."""
    tables, timesteps = FAMILIES[family]
    clipped = False
    for n in STEP_COUNTS:
        for i, t, prev_t in pairs(timesteps(n)):
            generator = torch.Generator().manual_seed(1000 * n + t)
            x = torch.randn(SHAPE, generator=generator)
            model_output = model_output_for(x, config, generator)
            noise = torch.randn(SHAPE, generator=generator)
            reference = reference_for_gap(DDIMScheduler, family, t - prev_t, config)
            expected = reference.step(model_output, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
            ours = step(model_output, t, prev_t, x, tables, config, eta, noise if needs_noise(prev_t, eta) else None)
            assert ours.shape == x.shape and ours.dtype == x.dtype
            assert torch.equal(ours, expected.prev_sample), (n, t, prev_t)
            clipped |= bool((expected.pred_original_sample.abs() == config.clip_sample_range).any())
    assert clipped == config.clip_sample  # the clamp was exercised, and only when enabled


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("family", FAMILIES)
def test_step_half_precision_follows_reference(family: str, dtype: torch.dtype) -> None:
    tables, timesteps = FAMILIES[family]
    for config in CONFIGS:
        for eta in (0.0, 0.5):
            for i, t, prev_t in pairs(timesteps(25)):
                generator = torch.Generator().manual_seed(t)
                x = torch.randn(SHAPE, generator=generator).to(dtype)
                model_output = model_output_for(x, config, generator)
                noise = torch.randn(SHAPE, generator=generator).to(dtype)
                expected = reference_for_gap(DDIMScheduler, family, t - prev_t, config).step(
                    model_output, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
                ours = step(model_output, t, prev_t, x, tables, config, eta,
                            noise if needs_noise(prev_t, eta) else None)
                assert ours.dtype == expected.dtype == dtype
                assert torch.equal(ours, expected), (config, eta, t)


@pytest.mark.parametrize("family", FAMILIES)
def test_learned_variance_reads_the_epsilon_half_only(family: str) -> None:
    """A (B, 2C, ...) output [ε | variance values], as unCLIP's guided decoder returns it: the step is the
    reference's on the first C channels, whatever the values are."""
    tables, timesteps = FAMILIES[family]
    plain = DDIMConfig(clip_sample=True)
    learned = DDIMConfig(clip_sample=True, learned_variance=True)
    for eta in (0.0, 1.0):
        for i, t, prev_t in pairs(timesteps(25)):
            generator = torch.Generator().manual_seed(t)
            x = torch.randn(SHAPE, generator=generator)
            model_output = model_output_for(x, learned, generator)  # (B, 2C, h, w)
            noise = torch.randn(SHAPE, generator=generator) if needs_noise(prev_t, eta) else None
            reference_noise = (torch.zeros(SHAPE) if noise is None else noise) if eta > 0 else None
            expected = reference_for_gap(DDIMScheduler, family, t - prev_t, plain).step(
                model_output[:, :4], t, x, eta=eta, variance_noise=reference_noise)
            ours = step(model_output, t, prev_t, x, tables, learned, eta, noise)
            assert torch.equal(ours, expected.prev_sample), (t, prev_t)
            junk = torch.cat([model_output[:, :4], torch.full(SHAPE, 1e6)], dim=1)
            assert torch.equal(step(junk, t, prev_t, x, tables, learned, eta, noise), ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_eta_one_is_the_ddpm_posterior(family: str) -> None:
    """DDIM §4.1: at η = 1, σ_t is the DDPM posterior's √β̃ and the step is ancestral DDPM ("fixed_small", no
    clamp), with β = 1 - ᾱ_t / ᾱ_{prev_t} over the skipped timesteps. Equal to float error, not bit-equal (the
    two formulas round differently)."""
    tables, timesteps = FAMILIES[family]
    ddpm_config = ddpm.DDPMConfig(clip_sample=False, variance_type="fixed_small")
    worst = 0.0
    for i, t, prev_t in pairs(timesteps(25))[1:]:  # from unCLIP's t = 999 (ᾱ ≈ 2e-9) rounding dominates x_0
        generator = torch.Generator().manual_seed(t)
        x = torch.randn(SHAPE, generator=generator)
        eps = torch.randn(SHAPE, generator=generator)
        noise = torch.randn(SHAPE, generator=generator)
        ours = step(eps, t, prev_t, x, tables, DDIMConfig(), 1.0, noise if needs_noise(prev_t, 1.0) else None)
        # DDPM adds noise down to t = 1 (times √1e-20 on a last step from t > 0), DDIM none on its last step
        expected = ddpm.step(eps, t, prev_t, x, tables, ddpm_config, noise if ddpm.needs_noise(t) else None)
        worst = max(worst, (ours - expected).abs().max().item())
    assert worst <= 1e-5


def test_set_alpha_to_one_false_is_a_last_step_to_timestep_zero() -> None:
    """Kandinsky's config says set_alpha_to_one: false. In `DDIMScheduler` that makes the last step (t = 1) end at
    ᾱ_0 instead of 1, which is our step to prev_t = 0; in `DDIMInverseScheduler` the first step starts at ᾱ_0,
    our inversion from t = 0."""
    tables = FAMILIES["kandinsky"][0]
    config = DDIMConfig()
    forward = DDIMScheduler.from_config(KANDINSKY_RAW)
    inverse = DDIMInverseScheduler.from_config(KANDINSKY_RAW)
    assert not forward.config.set_alpha_to_one and forward.final_alpha_cumprod == tables.alphas_cumprod[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    eps = torch.randn(SHAPE, generator=generator)
    for n in STEP_COUNTS:
        forward.set_timesteps(n)
        inverse.set_timesteps(n)
        assert forward.timesteps[-1] == inverse.timesteps[0] == 1
        assert torch.equal(step(eps, 1, 0, x, tables, config), forward.step(eps, 1, x).prev_sample)
        assert torch.equal(invert_step(eps, 0, 1, x, tables, config), inverse.step(eps, 1, x).prev_sample)


def test_step_rejects_bad_arguments() -> None:
    tables = FAMILIES["kandinsky"][0]
    x = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    eps = torch.randn(SHAPE)
    learned = DDIMConfig(learned_variance=True)
    with pytest.raises(SchedulerError, match="must output 4 channels for a 4-channel sample, got 8"):
        step(torch.randn(2, 8, 8, 8), 10, 5, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="learned-variance model must output 8 channels"):
        step(eps, 10, 5, x, tables, learned)
    with pytest.raises(SchedulerError, match="takes one noise tensor"):
        step(eps, 10, 5, x, tables, DDIMConfig(), 0.5)
    with pytest.raises(SchedulerError, match="takes no noise"):
        step(eps, 10, 5, x, tables, DDIMConfig(), 0.0, noise)
    with pytest.raises(SchedulerError, match="takes no noise"):
        step(eps, 10, -1, x, tables, DDIMConfig(), 1.0, noise)  # σ = 0 at the clean end
    with pytest.raises(SchedulerError, match="eta must be between 0 and 1"):
        step(eps, 10, 5, x, tables, DDIMConfig(), 1.5, noise)
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(eps, 10, 10, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(eps, 1000, 500, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="needs a noise_fn"):
        sample(lambda x, t, i: eps, x, [10, 5], tables, DDIMConfig(), 0.5)


# --- one inversion step ---


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_invert_step_equals_reference_step(family: str, config: DDIMConfig) -> None:
    """Bit-equal to `DDIMInverseScheduler.step(model_output, next_t, x)`, which goes from next_t - gap (ᾱ = 1 below
    0) up to next_t, for every inversion step of n-step runs, in float32, float16 and bfloat16."""
    tables, timesteps = FAMILIES[family]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n in STEP_COUNTS:
            for i, next_t, t in pairs(timesteps(n)):
                if t == -1 and config.prediction_type == "sample":
                    continue  # refused, see test_inversion_from_the_clean_sample_with_x0_prediction_is_refused
                generator = torch.Generator().manual_seed(1000 * n + next_t)
                x = torch.randn(SHAPE, generator=generator).to(dtype)
                model_output = model_output_for(x, config, generator)
                reference = reference_for_gap(DDIMInverseScheduler, family, next_t - t, config)
                expected = reference.step(model_output, next_t, x).prev_sample
                ours = invert_step(model_output, t, next_t, x, tables, config)
                assert ours.dtype == expected.dtype == dtype
                assert torch.equal(ours, expected), (dtype, n, t, next_t)


def test_inversion_from_the_clean_sample_with_x0_prediction_is_refused() -> None:
    tables = FAMILIES["unclip"][0]
    config = DDIMConfig("sample")
    x = torch.randn(SHAPE)
    expected = reference_for_gap(DDIMInverseScheduler, "unclip", 1, config).step(torch.randn(SHAPE), 0, x)
    assert not expected.prev_sample.isfinite().all()  # ε = (x - x_0) / 0
    with pytest.raises(SchedulerError, match="cannot start from the clean sample"):
        invert_step(torch.randn(SHAPE), -1, 0, x, tables, config)
    assert invert_step(torch.randn(SHAPE), 0, 41, x, tables, config).isfinite().all()


def test_invert_step_rejects_bad_arguments() -> None:
    tables = FAMILIES["unclip"][0]
    x = torch.randn(SHAPE)
    with pytest.raises(SchedulerError, match="-1 <= t < next_t <= 999"):
        invert_step(torch.randn(SHAPE), 5, 5, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="-1 <= t < next_t <= 999"):
        invert_step(torch.randn(SHAPE), 500, 1000, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="-1 <= t < next_t"):
        invert_step(torch.randn(SHAPE), -2, 5, x, tables, DDIMConfig())
    with pytest.raises(SchedulerError, match="learned-variance model must output 8 channels"):
        invert_step(torch.randn(SHAPE), 5, 10, x, tables, DDIMConfig(learned_variance=True))


# --- loops ---


def toy_model(seed: int, out_channels: int = 4):
    """A deterministic stand-in for a UNet: a channel mix of the sample shifted by the timestep. Records calls."""
    weights = torch.randn(out_channels, 4, generator=torch.Generator().manual_seed(seed)) / 2
    calls: list[tuple[int, int]] = []

    def model(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        calls.append((t, i))
        return 1.5 * torch.tanh(torch.einsum("oc,bc...->bo...", weights, x) + t / 1000)

    return model, calls


@pytest.mark.parametrize("eta", (0.0, 0.5, 1.0))
@pytest.mark.parametrize("n", (7, 25, 50))
def test_sample_equals_reference_loop(n: int, eta: float) -> None:
    """The reference's own loop where its spacing is ours (Kandinsky's "leading", steps_offset 1, with
    set_alpha_to_one true so that the last step ends at ᾱ = 1): `set_timesteps`, then `step` with one generator
    for the run. It draws a noise tensor at every step when η > 0; `sample` asks for one at every step but the last
    (σ = 0 there), so the same generator gives the same stream."""
    raw = {**KANDINSKY_RAW, "set_alpha_to_one": True}
    reference = DDIMScheduler.from_config(raw)
    tables, timesteps = FAMILIES["kandinsky"]
    assert torch.equal(reference.alphas_cumprod, tables.alphas_cumprod)
    reference.set_timesteps(n)
    steps = timesteps(n)
    assert reference.timesteps.tolist() == steps
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(n))

    model, _ = toy_model(seed=n)
    generator = torch.Generator().manual_seed(100 + n)
    expected = x_T
    for i, t in enumerate(reference.timesteps):
        expected = reference.step(model(expected, int(t), i), t, expected, eta=eta, generator=generator).prev_sample

    model, calls = toy_model(seed=n)
    generator = torch.Generator().manual_seed(100 + n)
    noise_calls, seen = [], []

    def noise_fn(i: int) -> torch.Tensor:
        noise_calls.append(i)
        return torch.randn(SHAPE, generator=generator)

    ours = sample(model, x_T, steps, tables, config_for(KANDINSKY), eta, noise_fn, lambda i, t, x: seen.append((t, i)))
    assert torch.equal(ours, expected)
    assert calls == seen == [(t, i) for i, t in enumerate(steps)]
    assert noise_calls == (list(range(n - 1)) if eta > 0 else [])


@pytest.mark.parametrize("n", (7, 25, 50))
def test_invert_equals_reference_loop(n: int) -> None:
    """`DDIMInverseScheduler`'s loop: its timesteps are ours ascending, the model is called at each one on the
    current sample, and its step goes up to that timestep from the one below (from ᾱ = 1 at the first)."""
    raw = {**KANDINSKY_RAW, "set_alpha_to_one": True}
    reference = DDIMInverseScheduler.from_config(raw)
    tables, timesteps = FAMILIES["kandinsky"]
    reference.set_timesteps(n)
    steps = timesteps(n)
    assert reference.timesteps.tolist() == steps[::-1]
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(n)).clamp(-1, 1)

    model, _ = toy_model(seed=n)
    expected = x0
    for t in reference.timesteps:
        expected = reference.step(model(expected, int(t), steps.index(int(t))), t, expected).prev_sample

    model, calls = toy_model(seed=n)
    seen = []
    ours = invert(model, x0, steps, tables, config_for(KANDINSKY), lambda i, t, x: seen.append((t, i)))
    assert torch.equal(ours, expected)
    assert calls == seen == [(t, i) for i, t in reversed(list(enumerate(steps)))]


@pytest.mark.parametrize("family", FAMILIES)
def test_loops_equal_per_step_reference_on_the_family_spacing(family: str) -> None:
    """The loops on the family's own timesteps (unCLIP's uneven ones too), each step checked against the gap-matched
    reference: sample at η = 0.5 with a learned-variance model, then invert."""
    tables, timesteps = FAMILIES[family]
    config = DDIMConfig(clip_sample=True, learned_variance=True)
    plain = DDIMConfig(clip_sample=True)
    steps = timesteps(25)
    model, _ = toy_model(seed=3, out_channels=8)
    noises = torch.randn((len(steps), *SHAPE), generator=torch.Generator().manual_seed(1))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))

    expected = x
    for i, t, prev_t in pairs(steps):
        reference = reference_for_gap(DDIMScheduler, family, t - prev_t, plain)
        expected = reference.step(model(expected, t, i)[:, :4], t, expected, eta=0.5,
                                  variance_noise=noises[i]).prev_sample
    ours = sample(model, x, steps, tables, config, 0.5, lambda i: noises[i])
    assert torch.equal(ours, expected)

    x0 = ours
    expected = x0
    for i, next_t, t in reversed(pairs(steps)):
        reference = reference_for_gap(DDIMInverseScheduler, family, next_t - t, plain)
        expected = reference.step(model(expected, next_t, i)[:, :4], next_t, expected).prev_sample
    assert torch.equal(invert(model, x0, steps, tables, config), expected)


# --- reconstruction ---


def exact_predictor(steps: list[int], dtype: torch.dtype, seed: int = 0):
    """A denoiser whose ε at timestep t is a fixed noise e_t, the same for any sample: exact in the sense that the
    inversion step up to t uses the very ε the sampling step down from t will use. Different e_t per timestep, so a
    timestep mismatch between the two loops shows."""
    generator = torch.Generator().manual_seed(seed)
    table = {t: torch.randn(SHAPE, generator=generator, dtype=dtype) for t in steps}
    return lambda x, t, i: table[t]


def reconstruction_error(family: str, n: int, dtype: torch.dtype, steps: list[int] | None = None) -> float:
    tables, timesteps = FAMILIES[family]
    steps = timesteps(n) if steps is None else steps
    denoise = exact_predictor(steps, dtype)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=dtype)
    x_T = invert(denoise, x0, steps, tables, DDIMConfig())
    return (sample(denoise, x_T, steps, tables, DDIMConfig()) - x0).abs().max().item()


@pytest.mark.parametrize("n", (25, 50))
@pytest.mark.parametrize("family", FAMILIES)
def test_invert_then_sample_reconstructs_x0(family: str, n: int) -> None:
    """Invert then sample at η = 0 with an exact predictor returns x_0: to 1e-10 in float64 on both families and
    to 1e-4 in float32 on Kandinsky's. On the cosine schedule the run starts at t = 999 where ᾱ ≈ 2.4e-9, so x_999
    holds x_0 only at a scale of √ᾱ ≈ 5e-5 and float32 keeps it to a few 1e-3 (the rounding of x_999 over √ᾱ);
    starting one timestep lower (t = 957 in 25 steps, √ᾱ ≈ 0.06) float32 is back under 1e-4."""
    assert reconstruction_error(family, n, torch.float64) <= 1e-10
    error32 = reconstruction_error(family, n, torch.float32)
    if family == "kandinsky":
        assert error32 <= 1e-4
    else:
        alpha_bar = FAMILIES[family][0].alphas_cumprod[999].item()
        assert 1e-4 < error32 <= 8 * 2**-24 * 4 / alpha_bar**0.5  # a few roundings of |x_999| <= 4 over √ᾱ
        assert reconstruction_error(family, n, torch.float32, FAMILIES[family][1](n)[1:]) <= 1e-4


def test_reconstruction_needs_the_matching_timesteps() -> None:
    """The negative control: a model evaluated at the step's lower end during inversion (not `invert`'s) fails."""
    tables, timesteps = FAMILIES["kandinsky"]
    steps = timesteps(25)
    denoise = exact_predictor(steps, torch.float64)
    lower = {t: (steps[i + 1] if i + 1 < len(steps) else steps[-1]) for i, t in enumerate(steps)}
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_T = invert(lambda x, t, i: denoise(x, lower[t], i), x0, steps, tables, DDIMConfig())
    assert (sample(denoise, x_T, steps, tables, DDIMConfig()) - x0).abs().max() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_invert_follows_the_forward_process_for_the_true_noise(family: str) -> None:
    """For a denoiser that knows the noise ε of x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε and returns it, the inversion lands on
    that x_t: `ddpm.add_noise(x_0, ε, steps[0])` (in float64, to the rounding of the float32 coefficients)."""
    tables, timesteps = FAMILIES[family]
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    for n in (25, 50):
        steps = timesteps(n)
        x_T = invert(lambda x, t, i: eps, x0, steps, tables, DDIMConfig())
        expected = ddpm.add_noise(x0, eps, steps[0], tables)
        assert (x_T - expected).abs().max() <= 1e-6  # add_noise takes its roots in float64, a step in float32


# --- no device reads ---


@pytest.mark.parametrize("family", FAMILIES)
def test_loops_never_read_device_values(family: str) -> None:
    """Both loops on the meta device, where any read of a tensor's values raises: they never synchronise."""
    tables, timesteps = FAMILIES[family]
    config = DDIMConfig(clip_sample=True, learned_variance=True)
    out_shape = (SHAPE[0], 8, *SHAPE[2:])
    x = torch.empty(SHAPE, device="meta", dtype=torch.float16)

    def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        return torch.empty(out_shape, device="meta", dtype=torch.float16)

    steps = timesteps(25)
    x_T = invert(denoise, x, steps, tables, config)
    ours = sample(denoise, x_T, steps, tables, config, 0.5,
                  lambda i: torch.empty(SHAPE, device="meta", dtype=torch.float16))
    for result in (x_T, ours):
        assert result.device.type == "meta" and result.dtype == torch.float16 and result.shape == SHAPE
    with pytest.raises((RuntimeError, NotImplementedError)):
        x.item()


@pytest.mark.parametrize("n", (7, 25))
def test_invert_from_timestep_zero_equals_reference_without_alpha_to_one(n: int) -> None:
    """`clean_at=0` is `DDIMInverseScheduler(set_alpha_to_one=False)`: its first step starts at ᾱ_0, not at 1."""
    raw = {**KANDINSKY_RAW, "set_alpha_to_one": False}
    reference = DDIMInverseScheduler.from_config(raw)
    tables, timesteps = FAMILIES["kandinsky"]
    reference.set_timesteps(n)
    steps = timesteps(n)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(n)).clamp(-1, 1)
    model, _ = toy_model(seed=n)
    expected = x0
    for t in reference.timesteps:
        expected = reference.step(model(expected, int(t), steps.index(int(t))), t, expected).prev_sample
    assert torch.equal(invert(model, x0, steps, tables, config_for(KANDINSKY), clean_at=0), expected)


def test_invert_skips_the_step_to_a_clean_end_at_timestep_zero() -> None:
    """On unCLIP's spacing, which ends at t = 0, an x_0-predicting model's inversion starts there: the sample is
    x_0 at t = 0, the step from -1 is not taken (its noise would be undefined), and `on_step` still sees it."""
    tables, timesteps = FAMILIES["unclip"]
    steps = timesteps(7)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    model, calls = toy_model(seed=3)
    seen: list[int] = []
    ours = invert(model, x0, steps, tables, DDIMConfig("sample"), lambda i, t, x: seen.append(t), clean_at=0)
    assert seen == steps[::-1] and [t for t, _ in calls] == steps[-2::-1]
    model, _ = toy_model(seed=3)
    x = x0
    for i in reversed(range(len(steps) - 1)):
        x = invert_step(model(x, steps[i], i), steps[i + 1], steps[i], x, tables, DDIMConfig("sample"))
    assert torch.equal(ours, x)


@pytest.mark.parametrize("prediction", ("epsilon", "sample"))
def test_refined_inversion_is_undone_by_sampling(prediction: str) -> None:
    """The ideal model for data drawn from N(0, s²): its x_0 = √ᾱ s² x / (ᾱ s² + 1 - ᾱ) depends on the sample, so
    plain inversion over 15 steps drifts; each refinement brings `sample`'s result closer to x_0, on the cosine
    schedule with its singular top lowered (`invertible`), for both predictions."""
    tables, timesteps = FAMILIES["unclip"]
    steps = invertible(timesteps(15), tables)
    config = DDIMConfig(prediction)
    x0 = 0.5 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def model(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        a = tables.alpha_bar(t).double()
        clean = a.sqrt() * 0.25 * x / (a * 0.25 + 1 - a)
        return clean if prediction == "sample" else (x - a.sqrt() * clean) / (1 - a).sqrt()

    clean_at = 0 if prediction == "sample" else -1
    errors = [(sample(model, invert(model, x0, steps, tables, config, clean_at=clean_at, refine=k), steps, tables,
                      config) - x0).abs().max().item() for k in (0, 2, 6)]
    assert errors[0] > 0.1 and errors[2] < errors[1] < errors[0] and errors[2] < 0.05 * errors[0], errors


def test_invertible_lowers_only_a_capped_top() -> None:
    tables, timesteps = FAMILIES["unclip"]
    assert invertible(timesteps(15), tables) == [998, *timesteps(15)[1:]]
    kandinsky_tables, kandinsky_steps = FAMILIES["kandinsky"]
    assert invertible(kandinsky_steps(25), kandinsky_tables) == kandinsky_steps(25)
    with pytest.raises(SchedulerError, match="no invertible start"):
        invertible([999, 998, 0], tables)
    with pytest.raises(SchedulerError, match="refine must be 0 or more"):
        invert(toy_model(0)[0], torch.zeros(SHAPE), [5, 0], tables, DDIMConfig(), refine=-1)


def test_clean_x0_takes_the_first_step_from_the_sample_itself() -> None:
    """With `clean_x0` the first step is √ᾱ_next x0, without calling the model; the rest is the plain inversion."""
    tables, timesteps = FAMILIES["unclip"]
    steps = timesteps(7)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8)).clamp(-1, 1)
    model, calls = toy_model(seed=8)
    ours = invert(model, x0, steps, tables, DDIMConfig("sample"), clean_at=0, clean_x0=True)
    assert [t for t, _ in calls] == steps[-3::-1]  # no call for the steps 0 (skipped) and 0 -> steps[-2]
    model, _ = toy_model(seed=8)
    x = tables.alpha_bar(steps[-2]) ** 0.5 * x0
    for i in reversed(range(len(steps) - 2)):
        x = invert_step(model(x, steps[i], i), steps[i + 1], steps[i], x, tables, DDIMConfig("sample"))
    assert torch.equal(ours, x)


def test_clean_step_corrects_its_start_against_sampling_and_keeps_the_nearest_iterate() -> None:
    """A model with x̂_0 = c x / √ᾱ, c per sample: one step to the clean end gives c x / √ᾱ, so each correction
    x += √ᾱ (x0 - c x / √ᾱ) multiplies the residual by 1 - c. For c = 0.5 it halves, and after 3 corrections
    sampling misses x0 by x0 / 16; for c = 3 it doubles each time, and that sample keeps its start √ᾱ x0. Every
    iterate is sampled once, one call per step, numbered as `sample` numbers them."""
    tables, timesteps = FAMILIES["unclip"]
    t = timesteps(7)[-2]
    c = torch.tensor([0.5, 3.0]).view(2, 1, 1, 1)
    calls: list[tuple[int, int]] = []

    def model(x: torch.Tensor, timestep: int, i: int) -> torch.Tensor:
        calls.append((timestep, i))
        return c * x / tables.alpha_bar(timestep) ** 0.5

    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    start = tables.alpha_bar(t) ** 0.5 * x0
    assert torch.equal(clean_step(model, x0, [t], tables, DDIMConfig("sample"), 0), start) and not calls
    ours = clean_step(model, x0, [t], tables, DDIMConfig("sample"), 3)
    assert calls == [(t, 0)] * 4
    torch.testing.assert_close(sample(model, ours, [t], tables, DDIMConfig("sample"))[0], x0[0] * 15 / 16)
    assert torch.equal(ours[1], start[1])


def test_refined_clean_x0_inversion_starts_with_the_clean_step_over_the_steps_below() -> None:
    """With `clean_x0` and `refine`, `invert`'s first step is `clean_step` over sampling's last two steps (the
    skipped t = 0 and the one above it), its calls numbered as sampling numbers them; the rest is refined as
    before."""
    tables, timesteps = FAMILIES["unclip"]
    steps = timesteps(7)
    n = len(steps)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10)).clamp(-1, 1)
    model, calls = toy_model(seed=10)
    seen: dict[int, torch.Tensor] = {}
    invert(model, x0, steps, tables, DDIMConfig("sample"), lambda i, t, x: seen.setdefault(i, x), clean_at=0,
           refine=2, clean_x0=True)
    assert calls[:6] == [(steps[-2], n - 2), (steps[-1], n - 1)] * 3
    assert [t for t, _ in calls[6:9]] == [steps[-3]] * 3  # the next step: one inversion call, two corrections
    fresh, _ = toy_model(seed=10)
    expected = clean_step(lambda x, t, k: fresh(x, t, n - 2 + k), x0, steps[-2:], tables, DDIMConfig("sample"), 2)
    assert torch.equal(seen[n - 2], expected)
