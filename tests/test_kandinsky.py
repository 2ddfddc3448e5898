"""Kandinsky 2.2 against diffusers' KandinskyV22CombinedPipeline and KandinskyV22Pipeline on the tiny checkpoint.

Same weights, same per-image seeds: the images must agree to 1e-4 in fp32, for several prompts and seeds, two sizes
(one not square), with and without a negative prompt, and with guidance off. Then the CLI end to end.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import KandinskyV22CombinedPipeline
from PIL import Image
from typer.testing import CliRunner

import dalle_cli
from dalle_cli.cli import app
from dalle_cli.cli.outputs import read_record
from dalle_cli.engine.noise import ImageNoise
from dalle_cli.families.kandinsky.settings import KandinskySettings as Settings

STEPS = ["--prior-steps", "2", "--decoder-steps", "3", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def model(tiny_kandinsky: tuple[Path, Path], monkeypatch_module: pytest.MonkeyPatch) -> object:
    prior, decoder = tiny_kandinsky
    return dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Keep this module's cached zero embeddings out of the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DALLE_CACHE", str(tmp_path_factory.mktemp("dalle-cache")))
    yield patch
    patch.undo()


def combined_pipeline(kind: type, decoder, prior):  # noqa: ANN001, ANN201
    """A diffusers combined pipeline of `kind` from a decoder pipeline and the prior pipeline's parts."""
    pipe = kind(unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq, prior_prior=prior.prior,
                prior_image_encoder=prior.image_encoder, prior_text_encoder=prior.text_encoder,
                prior_tokenizer=prior.tokenizer, prior_scheduler=prior.scheduler,
                prior_image_processor=prior.image_processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def combined(tiny_kandinsky_reference) -> KandinskyV22CombinedPipeline:  # noqa: ANN001
    return combined_pipeline(KandinskyV22CombinedPipeline, tiny_kandinsky_reference.decoder,
                             tiny_kandinsky_reference.prior)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def as_numpy(images: torch.Tensor) -> np.ndarray:
    """Our [-1, 1] NCHW tensor as the reference's output_type="np" array: [0, 1] NHWC."""
    return (images * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _assert_close_and_informative(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5 and ref.std() > 0.01  # not saturated, not flat
    assert np.abs(ours - ref).max() <= 1e-4


TEXT_CASES = [
    (["a red circle"], [0], Settings(2, 3, 4.0, 4.0, 64, 64)),
    (["an astronaut riding a horse", "a bowl of soup", "an astronaut riding a horse"], [7, 8, 9],
     Settings(3, 4, 4.0, 4.0, 64, 128)),  # not square
    (["a cat", "a dog"], [11, 12], Settings(2, 3, 1.0, 1.0, 64, 64)),  # guidance off
    (["a cat"], [3], Settings(3, 2, 4.0, 4.0, 128, 64, "blurry, dark")),  # a negative prompt
    (["a dog"], [4], Settings(2, 2, 1.0, 4.0, 64, 64, "a cat")),  # a negative prompt, prior guidance off
]


@pytest.mark.parametrize("prompts,seeds,settings", TEXT_CASES)
def test_text_to_image_matches_the_combined_pipeline(model, combined, prompts, seeds, settings) -> None:  # noqa: ANN001
    ref = combined(
        prompt=prompts, negative_prompt=settings.negative_prompt or None, generator=generators(seeds),
        prior_num_inference_steps=settings.prior_steps, num_inference_steps=settings.decoder_steps,
        prior_guidance_scale=settings.prior_guidance, guidance_scale=settings.decoder_guidance,
        width=settings.width, height=settings.height, output_type="np",
    ).images
    _assert_close_and_informative(as_numpy(model.generate_tensors(prompts, seeds, settings)), ref)


def _pictures() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(5)
    sizes = [(40, 30), (32, 32), (17, 50)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).byte().numpy()) for w, h in sizes]


@pytest.mark.parametrize("settings", [Settings(decoder_steps=3, width=64, height=64),
                                      Settings(decoder_steps=2, decoder_guidance=1.0, width=128, height=64)])
def test_variations_match_the_decoder_pipeline(model, tiny_kandinsky_reference, settings) -> None:  # noqa: ANN001
    prior, decoder = tiny_kandinsky_reference.prior, tiny_kandinsky_reference.decoder
    pictures, seeds = _pictures(), [1, 2, 3]
    with torch.no_grad():
        pixels = prior.image_processor(pictures, return_tensors="pt").pixel_values
        embeds = torch.cat([prior.image_encoder(p[None]).image_embeds for p in pixels])
        zero = prior.get_zero_embed(len(pictures))
    ref = decoder(image_embeds=embeds, negative_image_embeds=zero, generator=generators(seeds),
                  num_inference_steps=settings.decoder_steps, guidance_scale=settings.decoder_guidance,
                  width=settings.width, height=settings.height, output_type="np").images
    _assert_close_and_informative(as_numpy(model.vary_tensors(pictures, seeds, settings)), ref)


def test_an_image_depends_on_its_seed_not_its_batch(model) -> None:  # noqa: ANN001
    for settings in (Settings(2, 2, width=64, height=64), Settings(2, 2, width=64, height=64, negative_prompt="x")):
        alone = model.generate_tensors(["a green square"], [42], settings)
        batch = model.generate_tensors(["a cat", "a green square", "a bird"], [1, 42, 3], settings)
        assert (alone[0] - batch[1]).abs().max() <= 1e-5  # the same image, to float rounding of batched kernels
        assert (batch[0] - batch[2]).abs().max() > 1e-2


def test_the_stages_compose_generate(model) -> None:  # noqa: ANN001
    settings = Settings(2, 3, width=64, height=64)
    noise = ImageNoise([5, 6])
    embeds, negative = model.prior(["a red circle", "a cat"], noise, settings)
    assert embeds.shape == negative.shape == (2, 32)
    x_T = noise.start((4, 8, 8), torch.float32, torch.device("cpu"))
    images = model.decode(embeds, negative, noise, settings, x_T=x_T)
    assert torch.equal(images, model.generate_tensors(["a red circle", "a cat"], [5, 6], settings))


def test_the_zero_embedding_is_cached_so_text_to_image_never_needs_the_image_encoder(
        tiny_kandinsky: tuple[Path, Path], model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DALLE_CACHE", str(tmp_path))
    prior, decoder = tiny_kandinsky
    first = dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})
    made = first.generate_tensors(["a cat"], [1], Settings(2, 2, width=64, height=64))
    assert first.parts.image_encoder is not None and list(tmp_path.rglob("*.safetensors"))
    second = dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})
    again = second.generate_tensors(["a cat"], [1], Settings(2, 2, width=64, height=64))
    assert second.parts.image_encoder is None  # the cached embedding was enough
    assert torch.equal(made, again)


def dalle(*args: object, input: str | None = None):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def one_error(result, code: int) -> str:  # noqa: ANN001
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.output
    return errors[0]


def test_the_cli_end_to_end(tiny_kandinsky: tuple[Path, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DALLE_CACHE", str(tmp_path / "cache"))
    prior, decoder = tiny_kandinsky
    model = ["-m", decoder, "--prior", prior]
    made = dalle("gen", "a red circle", "a cat", *model, "--seed", 3, "--json", "-o", tmp_path / "a", *STEPS)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in made.stdout.splitlines()]
    assert [r["seed"] for r in records] == [3, 3]
    assert records[0]["settings"] == {"prior_steps": 2, "decoder_steps": 3, "prior_guidance": 4.0,
                                      "decoder_guidance": 4.0, "width": 64, "height": 64, "negative_prompt": "",
                                      "prior_candidates": 1}
    assert records[0]["prior"] == str(prior.resolve()) or records[0]["prior"] == str(prior)
    with Image.open(records[0]["path"]) as image:
        assert image.size == (64, 64)
    # The record, a batch-file line, makes its image again: the decoder and its prior come from the record.
    again = dalle("gen", "-f", "-", "-o", tmp_path / "b", input=json.dumps(read_record(Path(records[1]["path"]))))
    assert again.exit_code == 0, again.output
    remade = np.asarray(Image.open(again.stdout.strip())).astype(int)
    original = np.asarray(Image.open(records[1]["path"])).astype(int)
    assert np.abs(remade - original).max() <= 1  # alone now, second of two then: float rounding at most
    lines = '{"prompt": "a blue square", "seed": 9, "negative_prompt": "red"}\n{"prompt": "a cat", "width": 128}\n'
    batch = dalle("gen", "-f", "-", *model, "-o", tmp_path / "c", *STEPS, input=lines)
    assert batch.exit_code == 0, batch.output
    sizes = []
    for path in (tmp_path / "c").glob("*.png"):
        with Image.open(path) as image:
            sizes.append(image.size)
    sizes.sort()
    assert sizes == [(64, 64), (128, 64)]
    varied = dalle("vary", records[0]["path"], *model, "-n", 2, "--seed", 1, "-o", tmp_path / "d",
                   "--decoder-steps", 2, "--width", 64, "--height", 64)
    assert varied.exit_code == 0, varied.output
    assert len(varied.stdout.split()) == 2


def test_bad_input_is_one_line_and_exit_2(tiny_kandinsky: tuple[Path, Path], tiny_karlo: Path,
                                          tmp_path: Path) -> None:
    prior, decoder = tiny_kandinsky
    model = ["-m", decoder, "--prior", prior]
    assert "width must be a multiple of 64" in one_error(dalle("gen", "a", *model, "--width", 100), 2)
    assert "--sr-steps is not a setting of" in one_error(dalle("gen", "a", *model, "--sr-steps", 3), 2)
    line = one_error(dalle("gen", "a", "-m", decoder, "-o", tmp_path / "o"), 2)
    assert "is a Kandinsky 2.2 decoder and needs a prior: name one with --prior, for example --prior " \
           "kandinsky-2.2" in line
    assert "holds no Kandinsky 2.2 prior" in one_error(dalle("gen", "a", "-m", decoder, "--prior", tiny_karlo), 2)
    assert "takes no prior" in one_error(dalle("gen", "a", "-m", tiny_karlo, "--prior", prior), 2)


def test_a_prior_of_another_size_is_refused(tiny_kandinsky: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    prior, decoder = tiny_kandinsky
    other = tmp_path / "prior"
    shutil.copytree(prior, other)
    config = json.loads((other / "prior" / "config.json").read_text())
    (other / "prior" / "config.json").write_text(json.dumps({**config, "embedding_dim": 48}))
    line = one_error(dalle("gen", "a", "-m", decoder, "--prior", other, "-o", tmp_path / "o", *STEPS), 2)
    assert "makes 48-d image embeddings, but the decoder" in line and "reads 32-d ones" in line


# The exact safetensors sizes on the hub (reference FILES.md) and their dtypes' bytes per parameter.
HUB_FILES = {"text_encoder": (2_778_702_976, 4), "prior": (4_104_940_968, 4), "image_encoder": (3_689_912_664, 2),
             "unet": (5_012_309_584, 4), "movq": (271_380_364, 4)}


def test_real_size_components_have_the_reference_names_shapes_and_file_sizes() -> None:
    """Built on the meta device from the real configs (the keys not seen filled in as benchmarks/param_counts.py
    says): every component has exactly the reference's parameter names and shapes, and its parameters fill the
    hub's safetensors file but for the file's JSON header (under 120 kB: about 100 bytes a tensor)."""
    from benchmarks.param_counts import _reference_builders, compare, components

    builders = _reference_builders()
    for name, raw, key, ours in components("kandinsky-2.2"):
        count, ref_count, same = compare(name, raw, builders[key], ours)
        assert same and count == ref_count, name
        size, per = HUB_FILES[name]
        assert 0 <= size - count * per < 120_000, (name, size - count * per)


# A device that compares unequal to the CPU but computes on it, standing in for a GPU (see test_pipeline.py).
ACCELERATOR = torch.device("cpu", 0)
STAGES = {frozenset({"text_encoder", "prior"}), frozenset({"image_encoder"}), frozenset({"unet"}),
          frozenset({"movq"})}


def test_low_vram_holds_one_stage_on_the_accelerator(tiny_kandinsky: tuple[Path, Path], model,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dalle_cli.families.kandinsky.pipeline import Kandinsky

    monkeypatch.setenv("DALLE_CACHE", str(tmp_path))  # the zero embedding is computed here, with the image encoder
    prior, decoder = tiny_kandinsky
    plain = dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})
    low = Kandinsky(plain.parts, None, plain.defaults, ACCELERATOR, torch.float32, True, plain._source)
    low._image_encoder()
    held: set[str] = set()
    runs: list[tuple[str, frozenset[str]]] = []
    for name in ("text_encoder", "prior", "image_encoder", "unet", "movq"):
        module = getattr(low.parts, name)

        def to(device, name=name, move=module.to):  # noqa: ANN001, ANN202
            (held.add if torch.device(device) == ACCELERATOR else held.discard)(name)
            return move(device)

        monkeypatch.setattr(module, "to", to)
        called = module.decoder if name == "movq" else module  # MoVQ runs through decode(), not forward()
        called.register_forward_pre_hook(lambda _module, _args, name=name: runs.append((name, frozenset(held))))
    settings = Settings(2, 2, width=64, height=64)
    images = low.generate_tensors(["a red circle", "a cat"], [5, 6], settings)
    assert not held  # every network back on the CPU after the call
    variations = low.vary_tensors(_pictures()[:2], [7, 8], settings)
    assert not held
    assert {name for name, _ in runs} == {"text_encoder", "prior", "image_encoder", "unet", "movq"}
    for name, on_accelerator in runs:
        assert name in on_accelerator and on_accelerator in STAGES, (name, on_accelerator)
    assert torch.equal(images, model.generate_tensors(["a red circle", "a cat"], [5, 6], settings))
    assert torch.equal(variations, model.vary_tensors(_pictures()[:2], [7, 8], settings))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_tracks_fp32(tiny_kandinsky: tuple[Path, Path], model, dtype: str) -> None:  # noqa: ANN001
    """fp16 (the CUDA default) and bf16, here on the CPU, MoVQ included, stay within a few roundings of fp32."""
    prior, decoder = tiny_kandinsky
    half = dalle_cli.load(str(decoder), device="cpu", dtype=dtype, parts={"prior": str(prior)})
    settings = Settings(2, 3, width=64, height=64)
    ours = half.generate_tensors(["a red circle", "a cat"], [5, 6], settings)
    full = model.generate_tensors(["a red circle", "a cat"], [5, 6], settings)
    assert ours.dtype == half.dtype and torch.isfinite(ours).all()
    assert (ours.float() - full).abs().max() <= 16 * torch.finfo(half.dtype).eps
