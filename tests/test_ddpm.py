"""The DDPM schedule and sampler against diffusers' `DDPMScheduler` and `KandinskyV22Pipeline`'s loop."""

import types

import pytest
import torch
from diffusers import DDPMScheduler, KandinskyV22Pipeline
from diffusers.utils.torch_utils import randn_tensor

from dalle_cli.configs import from_config, read_json
from dalle_cli.diffusion.ddpm import (DDPMConfig, add_noise, learns_variance, needs_noise, noise_schedule, sample,
                                      step, timesteps)
from dalle_cli.diffusion.guidance import guide
from dalle_cli.engine.noise import ImageNoise
from dalle_cli.errors import ConfigError, SchedulerError
from reference import REFERENCE

KANDINSKY = read_json(REFERENCE / "kandinsky-community__kandinsky-2-2-decoder" / "scheduler"
                      / "scheduler_config.SUPERSEDED-e5c52c4.json")
CONFIGS = {
    "kandinsky": KANDINSKY,
    "defaults": {},
    "scaled_linear-trailing-v_prediction-clipped": {
        **KANDINSKY, "beta_schedule": "scaled_linear", "timestep_spacing": "trailing",
        "prediction_type": "v_prediction", "clip_sample": True, "variance_type": "fixed_small_log",
    },
    "cosine-linspace-learned_range-sample": {
        "beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "variance_type": "learned_range",
        "prediction_type": "sample", "clip_sample_range": 2.0,
    },
    "sigmoid-learned": {"beta_schedule": "sigmoid", "variance_type": "learned", "clip_sample": False},
    "fixed_large-trailing": {**KANDINSKY, "variance_type": "fixed_large", "timestep_spacing": "trailing"},
    "kandinsky-learned_range": {**KANDINSKY, "variance_type": "learned_range"},
}
STEP_COUNTS = (2, 7, 25, 50, 100)
SHAPE = (2, 4, 8, 8)  # (B, C, h, w): Kandinsky's 4 latent channels


def both(raw: dict) -> tuple[DDPMScheduler, DDPMConfig]:
    return DDPMScheduler.from_config(raw), from_config(DDPMConfig, raw)


def model_output_like(x: torch.Tensor, config: DDPMConfig, generator: torch.Generator) -> torch.Tensor:
    """A random model output for x: ε (or x_0, v) of x's shape, plus the variance values when the config learns
    them: σ² > 0 for "learned", v in [-1, 1] for "learned_range"."""
    output = torch.randn(x.shape, generator=generator) * 2 * config.clip_sample_range
    if config.variance_type == "learned":
        output = torch.cat([output, torch.rand(x.shape, generator=generator) * 0.1], dim=1)
    elif config.variance_type == "learned_range":
        output = torch.cat([output, torch.rand(x.shape, generator=generator) * 2 - 1], dim=1)
    return output


# --- config and schedule ---


def test_kandinsky_config_parses_with_the_reference_defaults() -> None:
    config = from_config(DDPMConfig, KANDINSKY)
    assert config == DDPMConfig(beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    assert config.timestep_spacing == "leading" and config.variance_type == "fixed_small"  # defaults: not in the file
    assert not learns_variance(config)


def test_defaults_are_the_reference_defaults() -> None:
    reference = DDPMScheduler().config
    ours = DDPMConfig()
    for key in DDPMConfig.__dataclass_fields__:
        assert getattr(ours, key) == reference[key], key
    assert set(DDPMConfig.__dataclass_fields__) == {k for k in reference if not k.startswith("_")}


@pytest.mark.parametrize("key, value", [
    ("beta_schedule", "laplace"), ("variance_type", "fixed_large_log"), ("prediction_type", "x0"),
    ("timestep_spacing", "karras"), ("thresholding", True), ("rescale_betas_zero_snr", True),
    ("trained_betas", [0.1, 0.2]), ("num_train_timesteps", 1),
])
def test_unsupported_config_values_raise_config_error(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        from_config(DDPMConfig, {**KANDINSKY, key: value})


@pytest.mark.parametrize("name", CONFIGS)
def test_noise_schedule_is_bit_identical(name: str) -> None:
    reference, config = both(CONFIGS[name])
    ours = noise_schedule(config)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == reference.alphas_cumprod.dtype == torch.float32
    assert torch.equal(ours.betas, reference.betas)
    assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("n", (1,) + STEP_COUNTS + (999,))
def test_timesteps_equal_set_timesteps(name: str, n: int) -> None:
    reference, config = both(CONFIGS[name])
    reference.set_timesteps(n)
    ours = timesteps(n, config)
    assert ours == reference.timesteps.tolist()
    assert all(type(t) is int for t in ours)
    assert all(needs_noise(t) for t in ours[:-1])


@pytest.mark.parametrize("spacing", ("leading", "trailing", "linspace"))
@pytest.mark.parametrize("offset", (0, 1))
@pytest.mark.parametrize("total", (1000, 997))
def test_timesteps_equal_set_timesteps_for_every_step_count(spacing: str, offset: int, total: int) -> None:
    """Every n from 1 to T: equal where the reference's timesteps are usable, a SchedulerError exactly where they
    are not (leading + steps_offset past T - 1; trailing's float arange giving n + 1 timesteps down to -1)."""
    raw = {"num_train_timesteps": total, "timestep_spacing": spacing, "steps_offset": offset}
    reference, config = both(raw)
    refused = []
    for n in range(1, total + 1):
        reference.set_timesteps(n)
        expected = reference.timesteps.tolist()
        if len(expected) == n and 0 <= min(expected) and max(expected) < total:
            assert timesteps(n, config) == expected, n
        else:
            with pytest.raises(SchedulerError, match="outside the training timesteps"):
                timesteps(n, config)
            refused.append(n)
    if spacing == "leading":
        assert refused == ([total] if offset else [])
    if spacing == "trailing" and total == 1000:
        assert refused[:4] == [61, 103, 121, 122] and len(refused) == 62
    if spacing == "linspace":
        assert refused == []


def test_kandinsky_timesteps_end_at_one_so_every_step_is_noisy() -> None:
    config = from_config(DDPMConfig, KANDINSKY)
    for n in STEP_COUNTS:
        steps = timesteps(n, config)
        assert steps[0] == (1000 // n) * (n - 1) + 1 and steps[-1] == 1
        assert all(needs_noise(t) for t in steps)


@pytest.mark.parametrize("n", (0, -3, 1001))
def test_unusable_step_counts_raise_scheduler_error(n: int) -> None:
    with pytest.raises(SchedulerError, match="between 1 and 1000 inference steps"):
        timesteps(n, DDPMConfig())


# --- one step ---


def step_cases(config: DDPMConfig, n: int) -> list[tuple[int, int, int]]:
    """(i, t, prev_t) of every step of an n-step run: the next timestep, or -1 after the last one."""
    steps = timesteps(n, config)
    return [(i, t, steps[i + 1] if i + 1 < n else -1) for i, t in enumerate(steps)]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("name", CONFIGS)
def test_step_equals_reference_step(name: str, dtype: torch.dtype) -> None:
    """Bit-equal to `DDPMScheduler.step` driven as the pipelines drive it (after set_timesteps, with the timestep
    tensor), given the same model output and the same noise (the reference draws it from a seeded generator)."""
    reference, config = both(CONFIGS[name])
    tables = noise_schedule(config)
    clipped = False
    for n in STEP_COUNTS:
        reference.set_timesteps(n)
        for i, t, prev_t in step_cases(config, n):
            seed = 1000 * n + t
            generator = torch.Generator().manual_seed(seed)
            x = torch.randn(SHAPE, generator=generator).to(dtype)
            model_output = model_output_like(x, config, generator).to(dtype)
            expected = reference.step(model_output, reference.timesteps[i], x,
                                      generator=torch.Generator().manual_seed(seed))
            noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype) if needs_noise(t) \
                else None
            ours = step(model_output, t, prev_t, x, tables, config, noise)
            assert ours.shape == x.shape and ours.dtype == expected.prev_sample.dtype == dtype
            assert torch.equal(ours, expected.prev_sample), (n, t, prev_t)
            x0 = expected.pred_original_sample
            clipped |= bool((x0.abs() == config.clip_sample_range).any())
    if config.clip_sample:
        assert clipped  # the clamp was exercised
    elif dtype == torch.float32:
        assert not clipped  # (float16 / bfloat16 values hit ±1 exactly by chance)


def test_step_rejects_bad_arguments() -> None:
    config = from_config(DDPMConfig, KANDINSKY)
    learned = from_config(DDPMConfig, CONFIGS["kandinsky-learned_range"])
    tables = noise_schedule(config)
    x = torch.randn(SHAPE)
    noise = torch.randn_like(x)
    with pytest.raises(SchedulerError, match="must output 4 channels, got 8"):
        step(torch.randn(2, 8, 8, 8), 10, 5, x, tables, config, noise)
    with pytest.raises(SchedulerError, match="learned_range model must output 2 x 4 channels"):
        step(torch.randn(SHAPE), 10, 5, x, tables, learned, noise)
    with pytest.raises(SchedulerError, match="one noise tensor"):
        step(torch.randn(SHAPE), 1, -1, x, tables, config)
    with pytest.raises(SchedulerError, match="no noise"):
        step(torch.randn(SHAPE), 0, -1, x, tables, config, noise)
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(torch.randn(SHAPE), 10, 10, x, tables, config, noise)
    with pytest.raises(SchedulerError, match="prev_t < t"):
        step(torch.randn(SHAPE), 1000, 500, x, tables, config, noise)


# --- add_noise ---


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("name", ("kandinsky", "scaled_linear-trailing-v_prediction-clipped"))
def test_add_noise_equals_reference(name: str, dtype: torch.dtype) -> None:
    reference, config = both(CONFIGS[name])
    tables = noise_schedule(config)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(SHAPE, generator=generator).to(dtype)
    noise = torch.randn(SHAPE, generator=generator).to(dtype)
    for t in (0, 1, 250, 853, 999):  # one timestep for the batch, as img2img's repeated latent_timestep
        expected = reference.add_noise(x0, noise, torch.tensor([t, t]))
        ours = add_noise(x0, noise, t, tables)
        assert ours.dtype == dtype and torch.equal(ours, expected), t
    expected = reference.add_noise(x0, noise, torch.tensor([7, 901]))
    assert torch.equal(add_noise(x0, noise, [7, 901], tables), expected)
    with pytest.raises(SchedulerError, match="one timestep or 2"):
        add_noise(x0, noise, [1, 2, 3], tables)
    with pytest.raises(SchedulerError, match="between 0 and 999"):
        add_noise(x0, noise, 1000, tables)


# --- full loops ---


class ToyUNet(torch.nn.Module):
    """A deterministic stand-in for Kandinsky's UNet with the call signature KandinskyV22Pipeline uses: a channel
    mix of the sample to 2C channels, shifted by the timestep and the image embeddings. Records every call."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, seed: int, out_channels: int = 8) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(in_channels=4)
        weights = torch.randn(out_channels, 4, generator=torch.Generator().manual_seed(seed)) / 2
        self.weights = torch.nn.Parameter(weights)
        self.calls: list[int] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: None,
                added_cond_kwargs: dict, return_dict: bool = False) -> tuple[torch.Tensor]:
        self.calls.append(int(timestep))
        shift = added_cond_kwargs["image_embeds"].mean(dim=1).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        mixed = torch.einsum("oc,bc...->bo...", self.weights, sample)  # (B, 2C, h, w)
        return (1.5 * torch.tanh(mixed + shift + int(timestep) / 1000),)


class ToyMoVQ(torch.nn.Module):
    """Only its config is read (the latents' downscale factor 2): the test asks the pipeline for latents."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(block_out_channels=(1, 1))


@pytest.mark.parametrize("n", (2, 7, 25))
@pytest.mark.parametrize("name", CONFIGS)
def test_sample_equals_reference_loop(name: str, n: int) -> None:
    """One generator for the batch: x_T, then the step noises, drawn in the reference's order."""
    reference, config = both(CONFIGS[name])
    channels = 8 if learns_variance(config) else 4
    embeds = torch.linspace(-1, 1, 2 * 6).view(2, 6)

    def model(unet: ToyUNet, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        output = unet(x, t, None, {"image_embeds": embeds})[0]
        if config.variance_type == "learned":  # the model predicts σ² > 0
            return torch.cat([output[:, :4], 0.01 * output[:, 4:].square()], dim=1)
        return output

    def reference_loop(unet: ToyUNet, generator: torch.Generator) -> torch.Tensor:
        x = randn_tensor(SHAPE, generator=generator)
        reference.set_timesteps(n)
        for t in reference.timesteps:
            x = reference.step(model(unet, x, t), t, x, generator=generator).prev_sample
        return x

    expected = reference_loop(ToyUNet(seed=n, out_channels=channels), torch.Generator().manual_seed(n))

    generator = torch.Generator().manual_seed(n)
    unet = ToyUNet(seed=n, out_channels=channels)
    noise_calls, seen = [], []

    def noise_fn(i: int) -> torch.Tensor:
        noise_calls.append(i)
        return torch.randn(SHAPE, generator=generator)

    x_T = torch.randn(SHAPE, generator=generator)
    steps = timesteps(n, config)
    ours = sample(lambda x, t, i: model(unet, x, t), x_T, steps, noise_schedule(config), config, noise_fn,
                  lambda i, t, x: seen.append(t))
    assert not ours.isnan().any() and torch.equal(ours, expected)
    assert unet.calls == seen == steps
    assert noise_calls == [i for i, t in enumerate(steps) if needs_noise(t)]


@pytest.mark.parametrize("scale", (1.0, 4.0))
@pytest.mark.parametrize("n", (2, 7, 25))
@pytest.mark.parametrize("name", ("kandinsky", "kandinsky-learned_range", "defaults"))
def test_kandinsky_pipeline_with_per_image_generators(name: str, n: int, scale: float) -> None:
    """The real `KandinskyV22Pipeline` (latents out, toy UNet) against `sample` driven the way a dalle pipeline
    will: doubled batch and `guide` only when scale > 1, the variance half dropped unless the config learns it, and
    all noise from per-image CPU generators through `ImageNoise`."""
    reference, config = both(CONFIGS[name])
    seeds = (11, 12)
    embeds, negative = torch.linspace(-1, 1, 12).view(2, 6), torch.zeros(2, 6)
    pipe = KandinskyV22Pipeline(unet=ToyUNet(seed=5), scheduler=reference, movq=ToyMoVQ())
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(image_embeds=embeds, negative_image_embeds=negative, height=16, width=16,
                        num_inference_steps=n, guidance_scale=scale, output_type="latent",
                        generator=[torch.Generator().manual_seed(s) for s in seeds]).images  # (B, 4, 8, 8)

    unet = ToyUNet(seed=5)
    channels = SHAPE[1]

    def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        if scale > 1:
            output = guide(unet(torch.cat([x, x]), t, None, {"image_embeds": torch.cat([negative, embeds])})[0],
                           scale, learned_variance=True)
        else:
            output = unet(x, t, None, {"image_embeds": embeds})[0]
        return output if learns_variance(config) else output[:, :channels]

    noise = ImageNoise(seeds)
    x_T = noise.start(SHAPE[1:], torch.float32, torch.device("cpu"))
    steps = timesteps(n, config)
    noises = noise.draw(SHAPE[1:], torch.float32, torch.device("cpu"), sum(needs_noise(t) for t in steps))
    with torch.no_grad():
        ours = sample(denoise, x_T, steps, noise_schedule(config), config, lambda i: noises[i])
    assert expected.shape == ours.shape == SHAPE
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", ("kandinsky", "cosine-linspace-learned_range-sample"))
def test_sample_never_reads_device_values(name: str) -> None:
    """The loop on the meta device, where any read of a tensor's values raises: it never synchronises."""
    config = from_config(DDPMConfig, CONFIGS[name])
    out_shape = (SHAPE[0], 8 if learns_variance(config) else 4, *SHAPE[2:])
    x_T = torch.empty(SHAPE, device="meta", dtype=torch.float16)
    ours = sample(
        lambda x, t, i: torch.empty(out_shape, device="meta", dtype=torch.float16),
        x_T,
        timesteps(25, config),
        noise_schedule(config),
        config,
        lambda i: torch.empty(SHAPE, device="meta", dtype=torch.float16),
    )
    assert ours.device.type == "meta" and ours.dtype == torch.float16 and ours.shape == SHAPE
    with pytest.raises((RuntimeError, NotImplementedError)):
        x_T.item()
