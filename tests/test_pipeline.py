"""Whole pipelines against diffusers' UnCLIPPipeline and UnCLIPImageVariationPipeline on the tiny checkpoint.

Same weights, same per-image seeds: the images must agree to 1e-4 in fp32, for several prompts, batches of several
seeds, different step counts, and guidance on, off (scale 1) and mixed.
"""

import numpy as np
import pytest
import torch
from diffusers import UnCLIPImageVariationPipeline
from PIL import Image

from dalle_cli.devices import image_batch
from dalle_cli.engine.noise import ImageNoise
from dalle_cli.errors import SchedulerError, UsageError
from dalle_cli.api import ModelInfo
from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings
from dalle_cli.families.unclip.components import load_components
from dalle_cli.families.unclip.pipeline import UnCLIP

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_karlo) -> UnCLIP:
    parts = load_components(tiny_karlo, torch.float32, CPU)
    return UnCLIP(parts, ModelInfo("tiny-karlo"), Settings(), CPU, torch.float32)


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _as_numpy(images: torch.Tensor) -> np.ndarray:
    """Our [-1, 1] NCHW tensor as the reference's output_type="np" array: [0, 1] NHWC."""
    return (images * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _assert_close_and_informative(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    # Saturated images would agree trivially; the damped tiny model keeps most pixels inside (0, 1).
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5
    assert np.abs(ours - ref).max() <= 1e-4


TEXT_CASES = [
    (["a red circle in the top left"], [0], Settings(2, 2, 2, 4.0, 8.0)),
    (["an astronaut riding a horse", "a bowl of soup", "an astronaut riding a horse"], [7, 8, 9],
     Settings(3, 4, 3, 4.0, 8.0)),
    (["a cat", "a dog"], [11, 12], Settings(5, 3, 2, 1.0, 1.0)),  # guidance off: single batch
    (["a very long prompt " * 20, "short"], [3, 4], Settings(2, 6, 4, 1.0, 3.0)),  # prior scale 1 in a guided batch
]


@pytest.mark.parametrize("prompts,seeds,settings", TEXT_CASES)
def test_text_to_image_matches_reference(model, tiny_reference, prompts, seeds, settings) -> None:
    pipe = tiny_reference[0]
    ref = pipe(
        prompt=prompts, generator=_generators(seeds), prior_num_inference_steps=settings.prior_steps,
        decoder_num_inference_steps=settings.decoder_steps, super_res_num_inference_steps=settings.sr_steps,
        prior_guidance_scale=settings.prior_guidance, decoder_guidance_scale=settings.decoder_guidance,
        output_type="np",
    ).images
    ours = model.generate_tensors(prompts, seeds, settings)
    _assert_close_and_informative(_as_numpy(ours), ref)


def _pictures() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(5)
    sizes = [(40, 30), (32, 32), (17, 50)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).byte().numpy()) for w, h in sizes]


@pytest.mark.parametrize("seeds,settings", [([1, 2, 3], Settings(decoder_steps=3, sr_steps=2)),
                                            ([4, 5, 6], Settings(decoder_steps=2, sr_steps=3, decoder_guidance=1.0))])
def test_variations_match_reference(model, tiny_reference, seeds, settings) -> None:
    pipe, image_encoder, processor = tiny_reference
    ref_pipe = UnCLIPImageVariationPipeline(
        decoder=pipe.decoder, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, text_proj=pipe.text_proj,
        feature_extractor=processor, image_encoder=image_encoder, super_res_first=pipe.super_res_first,
        super_res_last=pipe.super_res_last, decoder_scheduler=pipe.decoder_scheduler,
        super_res_scheduler=pipe.super_res_scheduler,
    )
    images = _pictures()
    ref = ref_pipe(
        image=images, generator=_generators(seeds), decoder_num_inference_steps=settings.decoder_steps,
        super_res_num_inference_steps=settings.sr_steps, decoder_guidance_scale=settings.decoder_guidance,
        output_type="np",
    ).images
    ours = model.vary_tensors(images, seeds, settings)
    _assert_close_and_informative(_as_numpy(ours), ref)


def test_karlo_epsilon_schedulers_match_reference(tmp_path) -> None:
    """Karlo's exact scheduler configs (ε prediction). Random weights saturate these images, so this case checks
    agreement only; the informative comparisons above use x_0 prediction for the same networks."""
    from tiny_karlo import build_reference, make_tiny_karlo

    folder = make_tiny_karlo(tmp_path / "karlo-eps", seed=1, prediction="epsilon")
    pipe = build_reference(seed=1, prediction="epsilon")[0]
    model = UnCLIP(load_components(folder, torch.float32, CPU), ModelInfo("eps"), Settings(), CPU, torch.float32)
    prompts, seeds = ["a cat", "an astronaut riding a horse"], [5, 6]
    ref = pipe(prompt=prompts, generator=_generators(seeds), prior_num_inference_steps=3,
               decoder_num_inference_steps=3, super_res_num_inference_steps=2, output_type="np").images
    ours = _as_numpy(model.generate_tensors(prompts, seeds, Settings(3, 3, 2)))
    assert np.abs(ours - ref).max() <= 1e-4
    assert not np.array_equal(ref[0], ref[1])


def test_an_image_depends_on_its_seed_not_its_batch(model) -> None:
    settings = Settings(3, 3, 2)
    alone = model.generate(["a green square"], [42], settings)[0]
    batch = model.generate(["a cat", "a dog", "a green square", "a bird", "a fish"], [1, 2, 42, 3, 4], settings)
    assert np.array_equal(np.asarray(alone), np.asarray(batch[2]))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def test_a_variation_depends_on_its_image_and_seed_not_its_batch(model) -> None:
    pictures, settings = _pictures(), Settings(decoder_steps=3, sr_steps=2)
    alone = model.vary([pictures[1]], [9], settings)[0]
    batch = model.vary([pictures[0], pictures[2], pictures[1], pictures[0]], [1, 2, 9, 3], settings)
    assert np.array_equal(np.asarray(alone), np.asarray(batch[2]))


def test_on_the_cpu_super_resolution_runs_an_image_a_call_and_its_result_ignores_the_batch(model) -> None:
    """`devices.image_batch`: each super-resolution call takes one image on the CPU, so an image's upscaled tensor
    is bit-equal alone and in a batch (the whole batch goes in one call on an accelerator)."""
    small = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings, sizes = Settings(sr_steps=3), []
    hooks = [unet.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
             for unet in (model.parts.super_res_first, model.parts.super_res_last)]
    try:
        batch = model.upscale(small, ImageNoise([5, 6, 7]), settings)
        assert sizes == [1] * 3 * 3  # three images, three steps (the last by super_res_last)
        alone = model.upscale(small[1:2], ImageNoise([6]), settings)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(alone[0], batch[1])
    assert image_batch(torch.device("cuda"), 8) == 8 and image_batch(CPU, 8) == 1


def test_one_step_is_a_clear_error(model) -> None:
    for settings in (Settings(prior_steps=1), Settings(decoder_steps=1), Settings(sr_steps=1)):
        with pytest.raises(SchedulerError, match="between 2 and 1000 inference steps"):
            model.generate(["a cat"], [0], settings)


def test_one_seed_per_image(model) -> None:
    with pytest.raises(UsageError, match="one seed per image"):
        model.generate(["a cat", "a dog"], [0], Settings(2, 2, 2))


# A device that compares unequal to the CPU but computes on it: it stands in for a GPU, so the low-VRAM moves show.
ACCELERATOR = torch.device("cpu", 0)
NETWORKS = ("text_encoder", "prior", "image_encoder", "text_proj", "decoder", "super_res_first", "super_res_last")
STAGES = {frozenset({"text_encoder", "prior"}), frozenset({"text_encoder", "image_encoder"}),
          frozenset({"text_proj", "decoder"}), frozenset({"super_res_first"}), frozenset({"super_res_last"})}


def test_low_vram_holds_one_stage_on_the_accelerator(tiny_karlo, model, monkeypatch) -> None:
    parts = load_components(tiny_karlo, torch.float32, CPU)
    low = UnCLIP(parts, ModelInfo("tiny-karlo"), Settings(), ACCELERATOR, torch.float32, low_vram=True)
    held: set[str] = set()  # the networks whose last move was onto the accelerator
    runs: list[tuple[str, frozenset[str]]] = []  # (network called, networks held at that moment)
    for name in NETWORKS:
        module = getattr(parts, name)

        def to(device, name=name, move=module.to):
            (held.add if torch.device(device) == ACCELERATOR else held.discard)(name)
            return move(device)

        monkeypatch.setattr(module, "to", to)
        module.register_forward_pre_hook(lambda _module, _args, name=name: runs.append((name, frozenset(held))))
    settings = Settings(2, 3, 3, 4.0, 8.0)

    images = low.generate_tensors(["a red circle", "a cat"], [5, 6], settings)
    assert not held  # all weights back on the CPU after the call
    variations = low.vary_tensors(_pictures()[:2], [7, 8], settings)
    assert not held

    assert {name for name, _ in runs} == set(NETWORKS)
    for name, on_accelerator in runs:
        assert name in on_accelerator and on_accelerator in STAGES, (name, on_accelerator)
    assert torch.equal(images, model.generate_tensors(["a red circle", "a cat"], [5, 6], settings))
    assert torch.equal(variations, model.vary_tensors(_pictures()[:2], [7, 8], settings))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pipelines_track_fp32(tiny_karlo, model, dtype) -> None:
    """fp16 (the CUDA default) and bf16 run whole pipelines, here on the CPU, and stay within a few roundings of
    fp32: 8 machine epsilons on images in [-1, 1], where a dtype bug gives O(1) errors or NaN. Measured: 2.3e-3
    (fp16, eps 9.8e-4) and 2.4e-2 (bf16, eps 7.8e-3)."""
    half = UnCLIP(load_components(tiny_karlo, dtype, CPU), ModelInfo("tiny-karlo"), Settings(), CPU, dtype)
    settings = Settings(3, 3, 2, 4.0, 8.0)
    tolerance = 8 * torch.finfo(dtype).eps
    for make in (lambda m: m.generate_tensors(["a red circle", "a cat"], [5, 6], settings),
                 lambda m: m.vary_tensors(_pictures()[:2], [7, 8], settings)):
        ours, full = make(half), make(model)
        assert ours.dtype == dtype
        assert (ours.float() - full).abs().max() <= tolerance
