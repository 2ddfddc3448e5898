"""The unCLIP schedule and sampler against diffusers' `UnCLIPScheduler` and the unCLIP pipelines' loops."""


import pytest
import torch
from diffusers import UnCLIPScheduler

from dalle_cli.configs import from_config, read_json
from dalle_cli.diffusion.guidance import guide
from dalle_cli.diffusion.sampler import needs_noise, sample, step
from dalle_cli.diffusion.schedule import SchedulerConfig, noise_schedule, timesteps
from dalle_cli.errors import ConfigError, SchedulerError
from reference import KARLO


STAGES = ("prior", "decoder", "super_res")
STEP_COUNTS = (2, 7, 25, 50, 1000)
OTHER = {
    "prediction_type": {"epsilon": "sample", "sample": "epsilon"},
    "variance_type": {"fixed_small_log": "learned_range", "learned_range": "fixed_small_log"},
}
TOL = 1e-6


def karlo_config(stage: str) -> dict:
    return read_json(KARLO / f"{stage}_scheduler" / "scheduler_config.json")


def variants() -> list[tuple[str, str, dict]]:
    """Each Karlo stage's config as is, with the other prediction type, the other variance type, and no clipping."""
    cases = []
    for stage in STAGES:
        raw = karlo_config(stage)
        cases.append((stage, "karlo", raw))
        for key, other in OTHER.items():
            cases.append((stage, f"{key}={other[raw[key]]}", {**raw, key: other[raw[key]]}))
        cases.append((stage, "clip_sample=False", {**raw, "clip_sample": False}))
    return cases


VARIANTS = variants()
VARIANT_IDS = [f"{stage}-{name}" for stage, name, _ in VARIANTS]


def both(raw: dict) -> tuple[UnCLIPScheduler, SchedulerConfig]:
    return UnCLIPScheduler.from_config(raw), from_config(SchedulerConfig, raw)


def sample_shape(stage: str, batch: int) -> tuple[int, ...]:
    """The prior samples image embeddings (B, D); the decoder and super-res sample images (B, C, H, W)."""
    return (batch, 24) if stage == "prior" else (batch, 3, 8, 8)


def output_channels(config: SchedulerConfig, channels: int) -> int:
    return 2 * channels if config.variance_type == "learned_range" else channels


def step_pairs(steps: list[int]) -> list[tuple[int, int | None]]:
    """(t, prev_timestep) as the pipelines pass them: the next timestep, or None after the last one."""
    pairs = [(t, steps[i + 1] if i + 1 < len(steps) else None) for i, t in enumerate(steps)]
    return pairs if len(pairs) <= 50 else pairs[:3] + pairs[3:-3:37] + pairs[-3:]


def step_noise(t: int, shape: torch.Size, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The noise the reference's step draws from a CPU generator seeded with `seed`, the way `randn_tensor` does."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) if needs_noise(t) else None


# --- config and schedule ---


def test_karlo_configs_parse() -> None:
    assert from_config(SchedulerConfig, karlo_config("prior")) == SchedulerConfig(
        clip_sample_range=5.0, prediction_type="sample"
    )
    assert from_config(SchedulerConfig, karlo_config("decoder")) == SchedulerConfig(variance_type="learned_range")
    assert from_config(SchedulerConfig, karlo_config("super_res")) == SchedulerConfig()


def test_defaults_are_the_reference_defaults() -> None:
    reference = UnCLIPScheduler().config
    ours = SchedulerConfig()
    for key in ("num_train_timesteps", "variance_type", "clip_sample", "clip_sample_range", "prediction_type"):
        assert getattr(ours, key) == reference[key], key
    assert ours.beta_schedule == reference["beta_schedule"]


@pytest.mark.parametrize(
    "key, value",
    [("variance_type", "fixed_large"), ("prediction_type", "v_prediction"), ("beta_schedule", "linear")],
)
def test_unsupported_config_values_raise_config_error(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        from_config(SchedulerConfig, {**karlo_config("decoder"), key: value})


@pytest.mark.parametrize("stage", STAGES)
def test_noise_schedule_is_bit_identical(stage: str) -> None:
    reference, config = both(karlo_config(stage))
    ours = noise_schedule(config)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == reference.alphas_cumprod.dtype == torch.float32
    assert torch.equal(ours.betas, reference.betas)
    assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("n", STEP_COUNTS + (3, 4, 64, 100, 333, 999))
def test_timesteps_equal_set_timesteps(stage: str, n: int) -> None:
    reference, config = both(karlo_config(stage))
    reference.set_timesteps(n)
    ours = timesteps(n, config)
    assert ours == reference.timesteps.tolist()
    assert ours[0] == config.num_train_timesteps - 1 and ours[-1] == 0
    assert all(type(t) is int for t in ours)
    assert sum(needs_noise(t) for t in ours) == n - 1


@pytest.mark.parametrize("n", (1, 0, -3, 1001))
def test_unusable_step_counts_raise_scheduler_error(n: int) -> None:
    with pytest.raises(SchedulerError, match="between 2 and 1000 inference steps"):
        timesteps(n, SchedulerConfig())


# --- one step ---


@pytest.mark.parametrize("stage, name, raw", VARIANTS, ids=VARIANT_IDS)
def test_step_equals_reference_step(stage: str, name: str, raw: dict) -> None:
    reference, config = both(raw)
    schedule = noise_schedule(config)
    clipped = False
    for n in STEP_COUNTS:
        for t, prev in step_pairs(timesteps(n, config)):
            seed = 1000 * n + t
            torch.manual_seed(seed)
            x = torch.randn(sample_shape(stage, batch=2))
            out_shape = (x.shape[0], output_channels(config, x.shape[1]), *x.shape[2:])
            model_output = torch.randn(out_shape) * 2 * config.clip_sample_range
            expected = reference.step(
                model_output, t, x, prev_timestep=prev, generator=torch.Generator().manual_seed(seed)
            )
            noise = step_noise(t, x.shape, seed)
            ours = step(model_output, t, t - 1 if prev is None else prev, x, schedule, config, noise)
            assert ours.shape == x.shape and ours.dtype == x.dtype
            assert (ours - expected.prev_sample).abs().max() <= TOL, (n, t, prev)
            x0 = expected.pred_original_sample
            clipped |= bool((x0.abs() == config.clip_sample_range).any())
    assert clipped == config.clip_sample  # the clamp was exercised (and only when enabled)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("stage", STAGES)
def test_step_half_precision_follows_reference(stage: str, dtype: torch.dtype) -> None:
    """Low-precision samples get the reference's promotions: the dtype is kept and the values match it."""
    reference, config = both(karlo_config(stage))
    schedule = noise_schedule(config)
    for t, prev in step_pairs(timesteps(7, config)):
        torch.manual_seed(t)
        x = torch.randn(sample_shape(stage, batch=2)).to(dtype)
        model_output = torch.randn(x.shape[0], output_channels(config, x.shape[1]), *x.shape[2:]).to(dtype)
        expected = reference.step(model_output, t, x, prev_timestep=prev, generator=torch.Generator().manual_seed(t))
        noise = step_noise(t, x.shape, seed=t, dtype=dtype)
        ours = step(model_output, t, t - 1 if prev is None else prev, x, schedule, config, noise)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, expected.prev_sample, rtol=0, atol=0)


def test_step_rejects_bad_arguments() -> None:
    config = from_config(SchedulerConfig, karlo_config("decoder"))
    schedule = noise_schedule(config)
    x = torch.randn(1, 3, 4, 4)
    eps_and_values = torch.randn(1, 6, 4, 4)
    noise = torch.randn_like(x)
    with pytest.raises(SchedulerError, match="2 x 3 channels"):
        step(torch.randn(1, 3, 4, 4), 10, 5, x, schedule, config, noise)
    with pytest.raises(SchedulerError, match="one noise tensor"):
        step(eps_and_values, 10, 5, x, schedule, config)
    with pytest.raises(SchedulerError, match="no noise"):
        step(eps_and_values, 0, -1, x, schedule, config, noise)
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(eps_and_values, 10, 10, x, schedule, config, noise)
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(eps_and_values, 1000, 500, x, schedule, config, noise)


# --- guidance ---


def pipeline_prior_guidance(predicted_image_embedding: torch.Tensor, scale: float) -> torch.Tensor:
    """UnCLIPPipeline's prior guidance, transcribed."""
    uncond, text = predicted_image_embedding.chunk(2)
    return uncond + scale * (text - uncond)


def pipeline_decoder_guidance(noise_pred: torch.Tensor, scale: float, in_channels: int) -> torch.Tensor:
    """UnCLIPPipeline's / UnCLIPImageVariationPipeline's decoder guidance, transcribed."""
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    noise_pred_uncond, _ = noise_pred_uncond.split(in_channels, dim=1)
    noise_pred_text, predicted_variance = noise_pred_text.split(in_channels, dim=1)
    noise_pred = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
    return torch.cat([noise_pred, predicted_variance], dim=1)


@pytest.mark.parametrize("scale", (1.0, 4.0, 8.0, 0.5))
@pytest.mark.parametrize("batch", (1, 3))
def test_guidance_equals_pipeline_formula(scale: float, batch: int) -> None:
    torch.manual_seed(batch)
    embeddings = torch.randn(2 * batch, 24)
    guided = guide(embeddings, scale)
    assert guided.shape == (batch, 24)
    assert torch.equal(guided, pipeline_prior_guidance(embeddings, scale))

    noise_pred = torch.randn(2 * batch, 6, 8, 8)
    guided = guide(noise_pred, scale, learned_variance=True)
    assert guided.shape == (batch, 6, 8, 8)
    assert torch.equal(guided, pipeline_decoder_guidance(noise_pred, scale, in_channels=3))
    assert torch.equal(guided[:, 3:], noise_pred[batch:, 3:])  # the conditional half's variance values


def test_guidance_with_scale_one_is_not_just_the_conditional_output() -> None:
    """The reference computes uncond + 1 · (cond - uncond) when a stage's scale is 1; guide() reproduces that."""
    torch.manual_seed(0)
    embeddings = torch.randn(2, 4096)
    guided = guide(embeddings, 1.0)
    assert torch.equal(guided, embeddings[:1] + 1.0 * (embeddings[1:] - embeddings[:1]))
    assert not torch.equal(guided, embeddings[1:])


def test_guidance_rejects_an_odd_batch() -> None:
    with pytest.raises(SchedulerError, match="unconditional; conditional"):
        guide(torch.randn(3, 8), 4.0)


# --- full loops ---


class FakeDenoiser:
    """A deterministic stand-in for a network: a channel mix of x plus a time shift, and another mix at the last
    step (like super-res's last network). Records every call."""

    def __init__(self, in_channels: int, out_channels: int, steps: int, amplitude: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(out_channels, in_channels, generator=generator) / in_channels**0.5
        self.last_weights = torch.randn(out_channels, in_channels, generator=generator) / in_channels**0.5
        self.steps, self.amplitude, self.calls = steps, amplitude, []

    def __call__(self, x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        self.calls.append((t, i))
        weights = self.last_weights if i == self.steps - 1 else self.weights
        return self.amplitude * torch.tanh(torch.einsum("oc,bc...->bo...", weights, x) + t / 1000)


def reference_loop(reference: UnCLIPScheduler, n: int, x: torch.Tensor, denoise, generator) -> torch.Tensor:
    """The pipelines' stage loop: set_timesteps, then step with prev_timestep (None at the end) and the generator."""
    reference.set_timesteps(n)
    steps = reference.timesteps
    for i, t in enumerate(steps):
        model_output = denoise(x, int(t), i)
        prev_timestep = None if i + 1 == steps.shape[0] else steps[i + 1]
        x = reference.step(model_output, t, x, prev_timestep=prev_timestep, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("stage, name, raw", VARIANTS, ids=VARIANT_IDS)
def test_sample_equals_reference_loop(stage: str, name: str, raw: dict, n: int) -> None:
    reference, config = both(raw)
    shape = sample_shape(stage, batch=2)
    out_channels = output_channels(config, shape[1])
    amplitude = 1.5 * config.clip_sample_range if config.prediction_type == "sample" else 1.5
    seed = n + len(name)

    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator)
    expected = reference_loop(reference, n, x_T, FakeDenoiser(shape[1], out_channels, n, amplitude, seed), generator)

    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator)
    denoise = FakeDenoiser(shape[1], out_channels, n, amplitude, seed)
    noise_calls, seen = [], []

    def noise_fn(i: int) -> torch.Tensor:
        noise_calls.append(i)
        return torch.randn(shape, generator=generator)

    steps = timesteps(n, config)
    ours = sample(denoise, x_T, steps, noise_schedule(config), config, noise_fn, lambda i, t, x: seen.append((t, i)))
    assert (ours - expected).abs().max() <= TOL
    assert denoise.calls == seen == [(t, i) for i, t in enumerate(steps)]
    assert noise_calls == list(range(n - 1))


@pytest.mark.parametrize("scale", (1.0, 8.0))
def test_guided_decoder_loop_with_per_image_generators(scale: float) -> None:
    """The decoder stage as the pipeline runs it: doubled batch, guidance, one CPU generator per image."""
    reference, config = both(karlo_config("decoder"))
    n, batch, shape = 7, 2, (1, 3, 8, 8)
    network = FakeDenoiser(3, 6, n, 1.5, seed=5)
    condition = torch.linspace(-0.5, 0.5, 6).view(1, 6, 1, 1)  # only the conditional half sees it

    def doubled(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        output = network(torch.cat([x, x]), t, i)  # (2B, 6, 8, 8)
        return output + torch.cat([torch.zeros_like(output[:batch]), condition.expand_as(output[batch:])])

    def per_image_noise(generators: list[torch.Generator]) -> torch.Tensor:
        return torch.cat([torch.randn(shape, generator=g) for g in generators])

    generators = [torch.Generator().manual_seed(s) for s in (11, 12)]
    x_T = per_image_noise(generators)
    reference.set_timesteps(n)
    x = x_T
    for i, t in enumerate(reference.timesteps):
        noise_pred = pipeline_decoder_guidance(doubled(x, int(t), i), scale, in_channels=3)
        prev_timestep = None if i + 1 == n else reference.timesteps[i + 1]
        x = reference.step(noise_pred, t, x, prev_timestep=prev_timestep, generator=generators).prev_sample

    generators = [torch.Generator().manual_seed(s) for s in (11, 12)]
    assert torch.equal(per_image_noise(generators), x_T)
    ours = sample(
        lambda x, t, i: guide(doubled(x, t, i), scale, learned_variance=True),
        x_T,
        timesteps(n, config),
        noise_schedule(config),
        config,
        lambda i: per_image_noise(generators),
    )
    assert (ours - x).abs().max() <= TOL


@pytest.mark.parametrize("stage", STAGES)
def test_sample_never_reads_device_values(stage: str) -> None:
    """Run the loop on the meta device, where any read of a tensor's values (`.item()`, `bool(t)`, `.cpu()`) raises:
    this proves the loop and the step never synchronise with the device the sample lives on."""
    config = from_config(SchedulerConfig, karlo_config(stage))
    shape = sample_shape(stage, batch=2)
    out_shape = (shape[0], output_channels(config, shape[1]), *shape[2:])
    x_T = torch.empty(shape, device="meta", dtype=torch.float16)
    ours = sample(
        lambda x, t, i: torch.empty(out_shape, device="meta", dtype=torch.float16),
        x_T,
        timesteps(25, config),
        noise_schedule(config),
        config,
        lambda i: torch.empty(shape, device="meta", dtype=torch.float16),
    )
    assert ours.device.type == "meta" and ours.dtype == torch.float16 and ours.shape == shape
    with pytest.raises((RuntimeError, NotImplementedError)):
        x_T.item()
