"""Kandinsky 2.2 edits against diffusers on the tiny checkpoints: inpainting (the 9-channel inpainting decoder)
against `KandinskyV22InpaintPipeline` and its combined pipeline, image to image against
`KandinskyV22Img2ImgPipeline` and its combined pipeline.

Same weights, same embeddings, pictures and masks (as tensors, so that no resizing differs), same per-image seeds:
the images agree to 1e-4 in fp32, two per batch, at a size that is not square. The reference's inpainting
re-imposes the first image's picture and mask on every image of a batch (`image[:1]`), so pictures that differ
within a batch are compared with the reference run one image at a time; a batch of one picture is compared batched.
The reference's image to image calls `image_processor.preprocess(image, width, height)`, whose parameters are
(image, height, width): it resizes a non-square picture to the transposed size (nearest neighbour) and makes an image
of that size. Its only use of width and height is that call, so the reference is handed them swapped
(`_swapped`), which keeps the picture's size.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (KandinskyV22Img2ImgCombinedPipeline, KandinskyV22Img2ImgPipeline,
                       KandinskyV22InpaintCombinedPipeline, UNet2DConditionModel)
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

import dalle_cli
from dalle_cli.api import Progress
from dalle_cli.configs import from_config
from dalle_cli.engine.noise import ImageNoise
from dalle_cli.errors import CheckpointError, UsageError
from dalle_cli.families.kandinsky import edits
from dalle_cli.families.kandinsky.settings import KandinskySettings as Settings
from dalle_cli.models.unet import UNet, UNetConfig
from dalle_cli.registry import COMMIT_SHA, DEFAULT_PATH, load_registry
from test_kandinsky import as_numpy, combined_pipeline, generators
from test_kandinsky_unet import real_config

# diffusers' image processor warns about [-1, 1] tensors, which it then takes as they are (no normalisation).
pytestmark = pytest.mark.filterwarnings("ignore:Passing `image` as torch tensor:FutureWarning")
EMBED = 32  # the tiny prior's image-embedding width
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Keep this module's cached zero embeddings out of the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DALLE_CACHE", str(tmp_path_factory.mktemp("dalle-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def model(tiny_kandinsky: tuple[Path, Path]) -> object:
    prior, decoder = tiny_kandinsky
    return dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})


@pytest.fixture(scope="module")
def inpaint_model(tiny_kandinsky: tuple[Path, Path], tiny_kandinsky_inpaint: Path) -> object:
    return dalle_cli.load(str(tiny_kandinsky_inpaint), device="cpu", parts={"prior": str(tiny_kandinsky[0])})


@pytest.fixture(scope="module")
def inpaint_pipe(tiny_kandinsky_inpaint_reference):  # noqa: ANN001, ANN201
    tiny_kandinsky_inpaint_reference.set_progress_bar_config(disable=True)
    return tiny_kandinsky_inpaint_reference


@pytest.fixture(scope="module")
def img2img_pipe(tiny_kandinsky_reference) -> KandinskyV22Img2ImgPipeline:  # noqa: ANN001
    decoder = tiny_kandinsky_reference.decoder
    pipe = KandinskyV22Img2ImgPipeline(unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_close(ours: torch.Tensor, ref: np.ndarray) -> float:
    """Ours equals the reference to TOL, and the reference is an image (not flat, not saturated); returns max |Δ|."""
    assert ours.shape == (ref.shape[0], ref.shape[3], ref.shape[1], ref.shape[2])
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5 and ref.std() > 0.01
    delta = float(np.abs(as_numpy(ours) - ref).max())
    assert delta <= TOL, delta
    return delta


def _negative(settings: Settings, prompts: list[str]) -> list[str] | None:
    """The reference prior's negative prompts: one per prompt (a single string works for one prompt only)."""
    return [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None


def _swapped(settings: Settings) -> dict[str, int]:
    """The size arguments of the reference's image to image that keep a picture at the settings' size."""
    return {"width": settings.height, "height": settings.width}


def _pictures(count: int, height: int, width: int, seed: int = 5) -> torch.Tensor:
    """Random pictures [count, 3, height, width] in [-1, 1] (each with negative values: see pytestmark)."""
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _masks(count: int, height: int, width: int) -> torch.Tensor:
    """Binary masks [count, 1, height, width], 1 = repaint: a different rectangle in each (edges not on the 8 px
    latent grid, so the nearest resizing matters)."""
    masks = torch.zeros(count, 1, height, width)
    for i in range(count):
        top, left = (5 + 11 * i) % (height // 2), (9 + 23 * i) % (width // 2)
        masks[i, :, top:top + height // 2, left:left + width // 3] = 1
    return masks


def _embeddings(count: int, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, EMBED, generator=g), torch.randn(count, EMBED, generator=g)


def test_the_keep_mask_is_the_reference_prepare_mask() -> None:
    """Nearest resizing is the reference's F.interpolate; the growth of the repainted region equals its loops."""
    masks = (torch.rand(4, 1, 8, 16, generator=torch.Generator().manual_seed(0)) > 0.85).float()
    ours = edits.keep_mask(masks, (8, 16))
    assert torch.equal(ours, prepare_mask(1 - masks))
    assert 0 < ours.mean() < 1 - masks.mean()  # the repainted region grew


@pytest.mark.parametrize("settings", [Settings(decoder_steps=3, width=128, height=64),
                                      Settings(decoder_steps=2, decoder_guidance=1.0, width=64, height=64)])
def test_inpainting_matches_the_inpaint_pipeline(inpaint_model, inpaint_pipe, settings) -> None:  # noqa: ANN001
    h, w, seeds = settings.height, settings.width, [3, 4]
    pixels, masks = _pictures(2, h, w), _masks(2, h, w)
    embeds, negative = _embeddings(2)

    def reference(i: slice, pictures: torch.Tensor, masks: torch.Tensor, seeds: list[int]) -> np.ndarray:
        return inpaint_pipe(image_embeds=embeds[i], negative_image_embeds=negative[i], image=pictures.clone(),
                            mask_image=masks.clone(), generator=generators(seeds),
                            num_inference_steps=settings.decoder_steps, guidance_scale=settings.decoder_guidance,
                            width=w, height=h, output_type="np").images

    def ours(pictures: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return edits.inpaint(inpaint_model, embeds, negative, pictures, masks, ImageNoise(seeds), settings,
                                 lambda event: None)

    # Two pictures and masks: the reference one image at a time.
    ref = np.concatenate([reference(slice(i, i + 1), pixels[i:i + 1], masks[i:i + 1], seeds[i:i + 1])
                          for i in range(2)])
    _assert_close(ours(pixels, masks), ref)
    # One picture and mask for both images: the reference batched, its guidance rows and masks laid out as ours.
    same, one_mask = pixels[:1].expand(2, -1, -1, -1), masks[:1].expand(2, -1, -1, -1)
    _assert_close(ours(same, one_mask), reference(slice(0, 2), same, one_mask, seeds))


@pytest.mark.parametrize("settings", [Settings(decoder_steps=4, width=128, height=64, strength=0.5),
                                      Settings(decoder_steps=3, decoder_guidance=1.0, width=64, height=64,
                                               strength=1.0),
                                      Settings(decoder_steps=10, width=64, height=128, strength=0.3)])
def test_image_to_image_matches_the_img2img_pipeline(model, img2img_pipe, settings) -> None:  # noqa: ANN001
    h, w, seeds = settings.height, settings.width, [7, 8]
    pixels = _pictures(2, h, w)
    embeds, negative = _embeddings(2)
    ref = img2img_pipe(image_embeds=embeds, negative_image_embeds=negative, image=pixels.clone(),
                       strength=settings.strength, generator=generators(seeds),
                       num_inference_steps=settings.decoder_steps, guidance_scale=settings.decoder_guidance,
                       output_type="np", **_swapped(settings)).images
    with torch.inference_mode():
        ours = edits.image_to_image(model, embeds, negative, pixels, ImageNoise(seeds), settings,
                                    lambda event: None)
    _assert_close(ours, ref)


def _combined_reference(pipe, prompts: list[str], seeds: list[int], settings: Settings,  # noqa: ANN001
                        **inputs: torch.Tensor | float) -> np.ndarray:
    """A combined pipeline's images, batched; with a negative prompt one image at a time, because the reference
    prior then runs prompts and negative prompts as one batch of 2B rows and cannot take B generators."""
    if settings.negative_prompt and len(prompts) > 1:
        return np.concatenate([
            _combined_reference(pipe, prompts[i:i + 1], seeds[i:i + 1], settings,
                                **{k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
            for i in range(len(prompts))])
    return pipe(prompt=prompts, negative_prompt=_negative(settings, prompts), generator=generators(seeds),
                prior_num_inference_steps=settings.prior_steps, num_inference_steps=settings.decoder_steps,
                prior_guidance_scale=settings.prior_guidance, guidance_scale=settings.decoder_guidance,
                output_type="np", **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                ).images


@pytest.mark.parametrize("settings", [Settings(2, 3, 4.0, 4.0, 128, 64),
                                      Settings(2, 2, 4.0, 4.0, 64, 64, "blurry, dark")])
def test_inpaint_edits_match_the_combined_pipeline(inpaint_model, inpaint_pipe,  # noqa: ANN001
                                                   tiny_kandinsky_reference, settings: Settings) -> None:
    prompts, seeds, h, w = ["a hat", "a red ball"], [5, 6], settings.height, settings.width
    pixels, masks = _pictures(1, h, w).expand(2, -1, -1, -1), _masks(1, h, w).expand(2, -1, -1, -1)
    combined = combined_pipeline(KandinskyV22InpaintCombinedPipeline, inpaint_pipe, tiny_kandinsky_reference.prior)
    ref = _combined_reference(combined, prompts, seeds, settings, image=pixels, mask_image=masks, width=w, height=h)
    _assert_close(inpaint_model.edit_tensors(pixels, masks, prompts, seeds, settings), ref)


@pytest.mark.parametrize("settings", [Settings(2, 4, 4.0, 4.0, 128, 64, strength=0.5),
                                      Settings(2, 3, 1.0, 4.0, 64, 64, "a cat", strength=0.7)])
def test_image_to_image_edits_match_the_combined_pipeline(model, tiny_kandinsky_reference,  # noqa: ANN001
                                                          settings: Settings) -> None:
    prompts, seeds = ["a hat", "a red ball"], [5, 6]
    pixels = _pictures(2, settings.height, settings.width)
    combined = combined_pipeline(KandinskyV22Img2ImgCombinedPipeline, tiny_kandinsky_reference.decoder,
                         tiny_kandinsky_reference.prior)
    ref = _combined_reference(combined, prompts, seeds, settings, image=pixels, strength=settings.strength,
                              **_swapped(settings))
    _assert_close(model.edit_tensors(pixels, None, prompts, seeds, settings), ref)


def test_an_edit_depends_on_its_seed_not_its_batch(model, inpaint_model) -> None:  # noqa: ANN001
    pixels, masks = _pictures(3, 64, 64), _masks(3, 64, 64)
    prompts, seeds = ["a cat", "a green square", "a bird"], [1, 42, 3]
    for edit, mask, settings in ((inpaint_model, masks, Settings(2, 2, width=64, height=64)),
                                 (model, None, Settings(2, 3, width=64, height=64, strength=0.7))):
        batch = edit.edit_tensors(pixels, mask, prompts, seeds, settings)
        alone = edit.edit_tensors(pixels[1:2], None if mask is None else mask[1:2], prompts[1:2], [42], settings)
        assert (alone[0] - batch[1]).abs().max() <= 1e-5  # the same image, to float rounding of batched kernels
        again = edit.edit_tensors(pixels[1:2], None if mask is None else mask[1:2], prompts[1:2], [43], settings)
        assert (again[0] - alone[0]).abs().max() > 1e-2  # and another seed gives another image


def test_edit_progress(model, inpaint_model) -> None:  # noqa: ANN001
    """The prior's steps, one "edit" event before the picture is encoded, then the decoder steps that run."""
    for edit, masks, settings, decoder in (
            (inpaint_model, _masks(2, 64, 64), Settings(2, 3, width=64, height=64), 3),
            (model, None, Settings(2, 4, width=64, height=64, strength=0.5), 2)):
        events: list[Progress] = []
        edit.edit_tensors(_pictures(2, 64, 64), masks, ["a", "b"], [1, 2], settings, progress=events.append)
        prior = [Progress("prior", i, 2, 0, 2, 2) for i in (1, 2)]
        steps = [Progress("decoder", i, decoder, 0, 2, 2) for i in range(1, decoder + 1)]
        assert events == [*prior, Progress("edit", 1, 1, 0, 2, 2), *steps]


def test_edit_size_and_default_strength(model) -> None:  # noqa: ANN001
    assert model.edit_size(Settings(width=128, height=64)) == (128, 64)
    assert model.edit_size() == (model.defaults.width, model.defaults.height)
    assert model.img2img_strength == 0.3  # KandinskyV22Img2ImgPipeline's default strength


def test_refusals(model, inpaint_model) -> None:  # noqa: ANN001
    settings = Settings(2, 2, width=64, height=64)
    pixels, masks = _pictures(1, 64, 64), _masks(1, 64, 64)
    with pytest.raises(UsageError, match="cannot repaint a masked region: use kandinsky-2.2-inpaint"):
        model.edit_tensors(pixels, masks, ["a"], [1], settings)
    with pytest.raises(UsageError, match="repaints masked regions only: image to image needs kandinsky-2.2"):
        inpaint_model.edit_tensors(pixels, None, ["a"], [1], Settings(2, 2, width=64, height=64, strength=0.5))
    with pytest.raises(UsageError, match="cannot use both a mask and a strength"):
        inpaint_model.edit_tensors(pixels, masks, ["a"], [1], Settings(2, 2, width=64, height=64, strength=0.5))
    with pytest.raises(UsageError, match="image to image needs a strength"):
        model.edit_tensors(pixels, None, ["a"], [1], settings)
    with pytest.raises(UsageError, match=r"needs pixels of shape \(1, 3, 64, 128\)"):
        model.edit_tensors(pixels, None, ["a"], [1], Settings(2, 2, width=128, height=64, strength=0.5))
    with pytest.raises(UsageError, match=r"needs masks of shape \(1, 1, 64, 64\)"):
        inpaint_model.edit_tensors(pixels, masks[:, :, :32], ["a"], [1], settings)
    for operation in ("generate", "vary", "interpolate", "text_diff"):
        with pytest.raises(UsageError, match=f"is an inpainting decoder and cannot {operation}"):
            inpaint_model.prepare(operation)
    inpaint_model.prepare("edit")
    model.prepare("edit")
    with pytest.raises(UsageError, match="is an inpainting decoder and cannot generate"):
        inpaint_model.generate_tensors(["a"], [1], settings)


def test_a_decoder_unet_of_other_input_channels_is_refused(tiny_kandinsky: tuple[Path, Path],
                                                          tiny_kandinsky_inpaint: Path, tmp_path: Path) -> None:
    decoder = tmp_path / "decoder"
    shutil.copytree(tiny_kandinsky_inpaint, decoder)
    config = json.loads((decoder / "unet" / "config.json").read_text())
    (decoder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 5}))
    with pytest.raises(CheckpointError, match="reads 5 channels, but a Kandinsky 2.2 decoder reads MoVQ's 4 latent "
                                              "channels, and an inpainting decoder 9"):
        dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(tiny_kandinsky[0])})


# Assumed (no config of the inpainting repo was seen): its UNet config is the decoder's with in_channels 9, the
# layout diffusers' inpainting pipeline feeds it (4 latent + 4 masked latent + 1 mask channels). The decoder's own
# unknown keys are assumed as test_kandinsky_unet.py assumes them (`real_config`).
def test_real_size_inpaint_unet_has_the_reference_names_and_shapes() -> None:
    raw = {**real_config(), "in_channels": 9}
    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(raw)
        ours = UNet(from_config(UNetConfig, raw))
        plain = UNet(from_config(UNetConfig, real_config()))
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert shapes["conv_in.weight"] == (384, 9, 3, 3)
    # The registry's size estimate: the decoder's files plus the fp32 bytes of the wider conv_in.
    extra = sum(p.numel() for p in ours.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 384 * 5 * 3 * 3
    registry = load_registry(DEFAULT_PATH)
    assert registry["kandinsky-2.2-inpaint"].size_bytes - registry["kandinsky-2.2"].size_bytes == 4 * extra


def test_the_kandinsky_inpaint_entry() -> None:
    """kandinsky-2.2-inpaint: the inpainting decoder repo pinned to a commit, configs and safetensors only, and the
    prior and image encoder of kandinsky-2.2."""
    registry = load_registry(DEFAULT_PATH)
    entry, plain = registry["kandinsky-2.2-inpaint"], registry["kandinsky-2.2"]
    assert entry.family == "kandinsky" and entry.license == "apache-2.0" and not entry.size_exact
    assert set(entry.repos) == {"decoder", "prior", "image_encoder"}
    decoder = entry.repos["decoder"]
    assert decoder.repo_id == "kandinsky-community/kandinsky-2-2-decoder-inpaint" and COMMIT_SHA.fullmatch(
        decoder.revision) and decoder.unpinned is None
    assert set(decoder.files) == {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                  "movq/config.json", "movq/diffusion_pytorch_model.safetensors",
                                  "scheduler/scheduler_config.json"}
    assert entry.repos["prior"] == plain.repos["prior"] and entry.repos["image_encoder"] == plain.repos["image_encoder"]
