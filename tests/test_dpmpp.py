"""DPM-Solver++(2M) against diffusers' `DPMSolverMultistepScheduler`, on both families' tables.

The reference is built with the family's betas (unCLIP's "squaredcos_cap_v2", Kandinsky's linear betas from its
scheduler config), so its ᾱ table is ours bit for bit, and run with `algorithm_type="dpmsolver++"`,
`solver_order=2`, `solver_type="midpoint"`, `final_sigmas_type="zero"`, `lower_order_final=True` and no
thresholding. `set_timesteps(timesteps=steps)` takes our family's own timesteps: its σ at each of them is then the
table's (`np.interp` at the integer timesteps), followed by σ = 0 for the clean end, and it steps by an internal
counter from one of them to the next, so unlike `DDIMScheduler` it walks our spacing (unCLIP's uneven one too).
With `final_sigmas_type="zero"` its last step is first order whatever `lower_order_final` says, and with
`solver_order=2` `lower_order_final`'s other effect (a lower order for the second-to-last step under 15 steps)
only concerns order 3. The reference cannot clamp x_0 (it has dynamic thresholding only), so the parity runs have
clip_sample off and the clamp is checked by hand. Its `variance_type="learned_range"` keeps `model_output[:, :3]`,
a channel count fixed for RGB pixel models such as unCLIP's decoder: the learned-variance case runs on a
3-channel sample (6 output channels), which is what the reference supports.
"""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from dalle_cli.diffusion.ddim import DDIMConfig
from dalle_cli.diffusion.dpmpp import sample, step
from dalle_cli.errors import SchedulerError
from test_ddim import FAMILIES, KANDINSKY, SHAPE, UNCLIP, model_output_for, pairs, toy_model

# the reference's set_timesteps calls np.array on a torch tensor with NumPy 2's copy keyword, which torch ignores
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

BETAS = {
    "unclip": {"num_train_timesteps": UNCLIP.num_train_timesteps, "beta_schedule": UNCLIP.beta_schedule},
    "kandinsky": {"num_train_timesteps": KANDINSKY.num_train_timesteps, "beta_schedule": KANDINSKY.beta_schedule,
                  "beta_start": KANDINSKY.beta_start, "beta_end": KANDINSKY.beta_end},
}
CASES = {  # name: (how our step reads the output, channels of the sample)
    "epsilon": (DDIMConfig(), 4),
    "sample": (DDIMConfig("sample"), 4),
    "v_prediction": (DDIMConfig("v_prediction"), 4),
    "learned_variance": (DDIMConfig(learned_variance=True), 3),
}
STEP_COUNTS = (7, 25, 50)


def reference_for(family: str, config: DDIMConfig, steps: list[int]) -> DPMSolverMultistepScheduler:
    """The reference on the family's tables and `steps`, reading the model output as `config` says."""
    reference = DPMSolverMultistepScheduler(
        **BETAS[family], algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        final_sigmas_type="zero", lower_order_final=True, thresholding=False,
        prediction_type=config.prediction_type, variance_type="learned_range" if config.learned_variance else None)
    reference.set_timesteps(timesteps=steps)
    assert torch.equal(reference.alphas_cumprod, FAMILIES[family][0].alphas_cumprod)
    assert reference.timesteps.tolist() == steps
    return reference


@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_steps_equal_reference_steps(family: str, case: str, n: int) -> None:
    """Both fed the same random model outputs, step after step: every sample and every x̂_0 is the reference's to
    the bit (so each step also starts from the same sample and history). The control: the same steps without the
    step before (first order) differ from the reference's second-order ones."""
    config, channels = CASES[case]
    tables, timesteps = FAMILIES[family]
    steps = timesteps(n)
    reference = reference_for(family, config, steps)
    generator = torch.Generator().manual_seed(n)
    x = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=generator)
    outputs = [model_output_for(x, config, generator) for _ in steps]
    expected = ours = x
    previous = None
    for i, t, prev_t in pairs(steps):
        first_order = step(outputs[i], t, prev_t, ours, tables, config)[0]
        expected = reference.step(outputs[i], t, expected).prev_sample
        ours, x0 = step(outputs[i], t, prev_t, ours, tables, config, previous)
        assert ours.shape == x.shape and ours.dtype == x.dtype
        assert torch.equal(x0, reference.model_outputs[-1]), (t, prev_t)
        assert torch.equal(ours, expected), (t, prev_t)
        assert torch.equal(first_order, ours) == (previous is None or prev_t == -1), (t, prev_t)
        previous = (x0, t)
    assert torch.equal(ours, previous[0])  # the last step returns its x̂_0


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_equals_reference_loop_with_one_call_per_step(family: str) -> None:
    """The loop with a toy model, against the reference's loop: n steps make n model calls, in order, and
    `on_step` sees each of them."""
    tables, timesteps = FAMILIES[family]
    steps = timesteps(25)
    reference = reference_for(family, DDIMConfig(), steps)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    model, _ = toy_model(seed=5)
    expected = x_T
    for i, t in enumerate(steps):
        expected = reference.step(model(expected, t, i), t, expected).prev_sample
    model, calls = toy_model(seed=5)
    seen: list[tuple[int, int]] = []
    ours = sample(model, x_T, steps, tables, DDIMConfig(), lambda i, t, x: seen.append((t, i)))
    assert torch.equal(ours, expected)
    assert calls == seen == [(t, i) for i, t in enumerate(steps)]


@pytest.mark.parametrize("family", FAMILIES)
def test_constant_data_prediction_is_solved_exactly(family: str) -> None:
    """For a model that always predicts the same x_0 the ODE dx/dλ is solved exactly (D1 = 0, and the first-order
    update integrates a constant x̂_0 without error): the implied noise (x_t - √ᾱ_t x_0) / √(1-ᾱ_t) stays the one
    of x_T along the way, and the run ends on x_0 itself."""
    tables, timesteps = FAMILIES[family]
    steps = timesteps(25)
    generator = torch.Generator().manual_seed(6)
    x0 = torch.rand(SHAPE, generator=generator, dtype=torch.float64) * 2 - 1
    x_T = torch.randn(SHAPE, generator=generator, dtype=torch.float64)

    def noise_of(x: torch.Tensor, t: int) -> torch.Tensor:
        alpha_bar = tables.alphas_cumprod[t].double()
        return (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    drift: list[float] = []
    later = dict(zip(steps, [*steps[1:], -1]))

    def on_step(i: int, t: int, x: torch.Tensor) -> None:
        if later[t] >= 0:
            drift.append((noise_of(x, later[t]) - noise_of(x_T, steps[0])).abs().max().item())

    ours = sample(lambda x, t, i: x0, x_T, steps, tables, DDIMConfig("sample"), on_step)
    assert torch.equal(ours, x0)
    assert len(drift) == len(steps) - 1 and max(drift) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_sample_clamps_the_predicted_x0(family: str) -> None:
    """With clip_sample, x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t (DDIM eq. 9) is clamped to ±clip_sample_range, and a
    first-order step uses the clamped one: x_{prev_t} = (σ'/σ) x_t + (α' - α σ'/σ) x̂_0, DPM-Solver++1 with
    e^{-h} = α σ' / (σ α'). Both computed here in float64 from ᾱ."""
    tables, timesteps = FAMILIES[family]
    config = DDIMConfig(clip_sample=True, clip_sample_range=1.5)
    t, prev_t = timesteps(25)[12:14]
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=generator)
    eps = 2 * torch.randn(SHAPE, generator=generator)
    a, a_prev = tables.alphas_cumprod[t].double(), tables.alphas_cumprod[prev_t].double()
    unclamped = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    x0 = unclamped.clamp(-1.5, 1.5)
    assert (unclamped.abs() > 1.5).any() and (unclamped.abs() < 1.5).any()
    ratio = ((1 - a_prev) / (1 - a)).sqrt()
    expected = ratio * x.double() + (a_prev.sqrt() - a.sqrt() * ratio) * x0

    x_prev, ours_x0 = step(eps, t, prev_t, x, tables, config)
    assert (ours_x0.double() - x0).abs().max() <= 1e-5
    assert (x_prev.double() - expected).abs().max() <= 1e-5
    assert torch.equal(step(eps, t, -1, x, tables, config)[0], ours_x0)  # the clean end is x̂_0 itself


def test_loop_never_reads_device_values() -> None:
    """The loop on the meta device, where any read of a tensor's values raises: it never synchronises."""
    tables, timesteps = FAMILIES["unclip"]
    out_shape = (SHAPE[0], 8, *SHAPE[2:])
    x = torch.empty(SHAPE, device="meta", dtype=torch.float16)
    ours = sample(lambda x, t, i: torch.empty(out_shape, device="meta", dtype=torch.float16), x, timesteps(25),
                  tables, DDIMConfig(clip_sample=True, learned_variance=True))
    assert ours.device.type == "meta" and ours.dtype == torch.float16 and ours.shape == SHAPE


def test_step_rejects_bad_arguments() -> None:
    tables = FAMILIES["kandinsky"][0]
    x = torch.randn(SHAPE)
    eps = torch.randn(SHAPE)
    for t, prev_t in ((10, 10), (10, 11), (10, -2), (1000, 500), (-1, -2)):
        with pytest.raises(SchedulerError, match="-1 <= prev_t < t <= 999"):
            step(eps, t, prev_t, x, tables, DDIMConfig())
    for before in (10, 5, 1000):
        with pytest.raises(SchedulerError, match="needs the step before at a timestep in"):
            step(eps, 10, 5, x, tables, DDIMConfig(), (x, before))
    with pytest.raises(SchedulerError, match="learned-variance model must output 8 channels"):
        step(eps, 10, 5, x, tables, DDIMConfig(learned_variance=True))
