"""The CLIP text and vision towers against transformers' CLIP models, and image pre/post-processing against
`CLIPImageProcessor` and diffusers' `numpy_to_pil`."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from diffusers.utils.pil_utils import numpy_to_pil
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.errors import ConfigError, UsageError
from dalle_cli.images import PreprocessConfig, load_image, preprocess, to_pil, to_unit_range
from dalle_cli.models.clip_layers import tower_config
from dalle_cli.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from dalle_cli.models.clip_vision import VISION_KEYS, CLIPVisionConfig, CLIPVisionEncoder, load_vision_encoder
from reference import CLIP_L14, KARLO, REFERENCE

CPU = torch.device("cpu")
VOCAB = 1000
TINY_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, pad_token_id=1)
TINY_VISION = dict(hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------- text tower


def _text_pair(tmp_path: Path, eos: int, act: str) -> tuple[CLIPTextModelWithProjection, CLIPTextEncoder]:
    torch.manual_seed(eos + len(act))
    ref = CLIPTextModelWithProjection(transformers.CLIPTextConfig(**TINY_TEXT, eos_token_id=eos, hidden_act=act)).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    config = from_config(CLIPTextConfig, read_json(tmp_path / "config.json"))
    ours = load_weights(lambda: CLIPTextEncoder(config), tmp_path, "text_encoder", torch.float32, CPU)
    return ref, ours


def _prompts(seed: int, batch: int, length: int, end_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token rows, each with start token 0, the end token `end_id` at a random place, then pad-token 1s."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 1, (batch, length), generator=gen)
    ids[:, 0] = 0
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, end in enumerate(torch.randint(1, length, (batch,), generator=gen).tolist()):
        ids[row, end] = end_id
        ids[row, end + 1:] = 1
        mask[row, end + 1:] = 0
    return ids, mask


@pytest.mark.parametrize("eos,end_id", [(2, VOCAB - 1), (VOCAB - 1, VOCAB - 1), (7, 7)],
                         ids=["legacy-eos-2", "modern-largest-id", "modern-small-id"])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_text_encoder_matches_reference(tmp_path: Path, eos: int, end_id: int, act: str) -> None:
    ref, ours = _text_pair(tmp_path, eos, act)
    worst = 0.0
    for seed, (batch, length) in enumerate([(3, 16), (2, 9), (4, 2)]):
        ids, mask = _prompts(seed, batch, length, end_id)
        for attention_mask in (None, mask):
            with torch.no_grad():
                expected = ref(input_ids=ids, attention_mask=attention_mask)
            embeds, hidden = ours(ids, attention_mask)
            worst = max(worst, _max_diff(embeds, expected.text_embeds), _max_diff(hidden, expected.last_hidden_state))
    assert worst <= 1e-5


def test_text_pooling_picks_the_end_token(tmp_path: Path) -> None:
    """Legacy configs pool at the largest id; modern ones at the first end token, even when padding repeats it."""
    _, legacy = _text_pair(tmp_path / "legacy", 2, "quick_gelu")
    _, modern = _text_pair(tmp_path / "modern", 7, "quick_gelu")
    ids = torch.tensor([[0, 500, 7, 999, 7, 7]])
    for model, end in ((legacy, 3), (modern, 2)):
        embeds, hidden = model(ids)
        assert torch.equal(embeds, model.text_projection(hidden[:, end]))


def test_text_encoder_refuses_overlong_input(tmp_path: Path) -> None:
    _, ours = _text_pair(tmp_path, 2, "quick_gelu")
    with pytest.raises(UsageError, match="at most 16"):
        ours(torch.zeros(1, 17, dtype=torch.long))


# -------------------------------------------------------------------------------------------------- vision tower


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vision_encoder_matches_reference(tmp_path: Path, act: str) -> None:
    torch.manual_seed(len(act))
    ref = CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY_VISION, hidden_act=act)).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_vision_encoder(tmp_path, torch.float32, CPU)
    worst = 0.0
    for seed, batch in enumerate([1, 3]):
        pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            worst = max(worst, _max_diff(ours(pixels), ref(pixel_values=pixels).image_embeds))
    assert worst <= 1e-5
    with pytest.raises(ConfigError, match="takes 32x32 pixels but was given 24x32"):
        ours(torch.zeros(1, 3, 24, 32))


def test_vision_encoder_from_a_full_clip_checkpoint(tmp_path: Path) -> None:
    """openai's CLIP repos hold both towers in one file: the vision tower loads from it, with the top-level
    projection_dim, and the text tower is not read."""
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config={**TINY_TEXT}, vision_config={**TINY_VISION, "projection_dim": 512},
                                     projection_dim=24)
    ref = CLIPModel(config).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_vision_encoder(tmp_path, torch.float32, CPU)
    assert not any(name.startswith("text") for name in ours.state_dict())
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.visual_projection(ref.vision_model(pixel_values=pixels).pooler_output)
    assert _max_diff(ours(pixels), expected) <= 1e-5


# -------------------------------------------------------------------------------- real configs, on the meta device


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items() if not name.endswith("position_ids")}


def _same_defaults(ours: type, ref: type) -> None:
    reference = ref()
    for f in dataclasses.fields(ours):
        assert getattr(reference, f.name) == f.default, f.name


def test_config_defaults_are_the_references() -> None:
    _same_defaults(CLIPTextConfig, transformers.CLIPTextConfig)
    _same_defaults(CLIPVisionConfig, transformers.CLIPVisionConfig)


@pytest.mark.parametrize("path", [KARLO / "text_encoder",
                                  REFERENCE / "kakaobrain__karlo-v1-alpha-image-variations" / "text_encoder"])
def test_real_text_encoder_has_the_reference_parameters(path: Path) -> None:
    raw = read_json(path / "config.json")
    config = from_config(CLIPTextConfig, raw)
    assert (config.hidden_size, config.num_hidden_layers, config.eos_token_id) == (768, 12, 2)
    with torch.device("meta"):
        ref = CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_pretrained(path))
        ours = CLIPTextEncoder(config)
    assert _shapes(ours) == _shapes(ref)


def test_real_vision_encoder_has_the_reference_parameters() -> None:
    config = from_config(CLIPVisionConfig, tower_config(read_json(CLIP_L14 / "config.json"), "vision_config"))
    with torch.device("meta"):
        ref = CLIPVisionModelWithProjection(transformers.CLIPVisionConfig.from_pretrained(CLIP_L14))
        ours = CLIPVisionEncoder(config)
    assert _shapes(ours) == _shapes(ref)


def test_partial_vision_config_is_refused_clearly() -> None:
    """Our copy of Karlo's refs/pr/8 image_encoder config lacks its head count: the ViT-B default (12) does not divide
    width 1024, which transformers refuses too."""
    config = from_config(CLIPVisionConfig, read_json(KARLO / "refs-pr-8" / "image_encoder" / "config.json"))
    with pytest.raises(ConfigError, match="image_encoder: hidden_size 1024 is not a multiple of num_attention_heads"):
        CLIPVisionEncoder(config)


def test_clip_l14_vision_keys_are_those_of_the_full_checkpoint() -> None:
    """The vision part of openai's CLIPModel file is exactly our module; everything else is the text tower."""
    raw = read_json(CLIP_L14 / "config.json")
    with torch.device("meta"):
        full = CLIPModel(transformers.CLIPConfig.from_pretrained(CLIP_L14))
        vision = CLIPVisionEncoder(from_config(CLIPVisionConfig, tower_config(raw, "vision_config")))
        text = CLIPTextEncoder(from_config(CLIPTextConfig, tower_config(raw, "text_config")))
    full_shapes = _shapes(full)
    assert _shapes(vision) == {k: v for k, v in full_shapes.items() if k.startswith(VISION_KEYS)}
    assert _shapes(text) == {k: v for k, v in full_shapes.items() if k.startswith(("text_model.", "text_projection."))}
    assert {k for k in full_shapes if not k.startswith((*VISION_KEYS, "text_"))} == {"logit_scale"}
    assert vision.config.hidden_size == 1024 and vision.config.patch_size == 14 and vision.config.projection_dim == 768


# ------------------------------------------------------------------------------------------------- preprocessing


def _test_images() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(3)

    def noise(w: int, h: int, c: int) -> np.ndarray:
        return (torch.rand(h, w, c, generator=gen) * 255).byte().numpy()

    palette = Image.fromarray(noise(33, 47, 3)).convert("P")
    palette.info["transparency"] = 5
    return [
        Image.fromarray(noise(300, 200, 3)),
        Image.fromarray(noise(50, 90, 3)),
        Image.fromarray(noise(224, 224, 3)),
        Image.fromarray(noise(301, 157, 4), mode="RGBA"),
        Image.fromarray(noise(97, 64, 1)[..., 0], mode="L"),
        Image.fromarray(noise(61, 40, 2), mode="LA"),
        palette,
    ]


@pytest.mark.parametrize("folder", [CLIP_L14, KARLO / "refs-pr-8" / "feature_extractor"])
def test_preprocess_matches_clip_image_processor(folder: Path) -> None:
    raw = read_json(folder / "preprocessor_config.json")
    reference = CLIPImageProcessor.from_pretrained(folder)
    images = _test_images()
    expected = reference(images=images, return_tensors="pt").pixel_values
    ours = preprocess(images, from_config(PreprocessConfig, raw))
    assert ours.dtype == torch.float32 and ours.shape == (len(images), 3, 224, 224)
    assert _max_diff(ours, expected) <= 1e-5


@pytest.mark.parametrize("changes", [
    {"size": {"height": 40, "width": 30}, "crop_size": 24, "resample": 2},
    {"size": 20, "crop_size": {"height": 32, "width": 28}},  # crop larger than the image: zero padding
    {"do_resize": False, "crop_size": [60, 70]},
    {"do_center_crop": False, "size": {"height": 16, "width": 16}, "do_normalize": False},
    {"size": 50, "crop_size": 48, "do_rescale": False, "image_mean": 0.5, "image_std": 0.25, "resample": 1},
])
def test_preprocess_matches_other_processor_settings(tmp_path: Path, changes: dict) -> None:
    raw = {**read_json(KARLO / "refs-pr-8" / "feature_extractor" / "preprocessor_config.json"), **changes}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    images = _test_images()[:2] + _test_images()[3:5]
    expected = CLIPImageProcessor.from_pretrained(tmp_path)(images=images, return_tensors="pt").pixel_values
    assert _max_diff(preprocess(images, from_config(PreprocessConfig, raw)), expected.float()) <= 1e-5


def test_preprocess_config_normalizes_legacy_forms_and_refuses_unknown_ones() -> None:
    legacy = from_config(PreprocessConfig, read_json(CLIP_L14 / "preprocessor_config.json"))
    assert legacy.size == {"shortest_edge": 224} and legacy.crop_size == {"height": 224, "width": 224}
    assert legacy == PreprocessConfig()
    with pytest.raises(ConfigError, match="unsupported size"):
        from_config(PreprocessConfig, {"size": {"longest_edge": 224}})
    with pytest.raises(ConfigError, match="unsupported resample"):
        from_config(PreprocessConfig, {"resample": 9})
    with pytest.raises(ConfigError, match="image_std must hold 3 values"):
        from_config(PreprocessConfig, {"image_std": [0.5, 0.5]})


# ---------------------------------------------------------------------------------------------- reading pictures


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    picture = Image.new("RGB", (80, 40), (255, 0, 0))
    picture.paste((0, 0, 255), (40, 0, 80, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    picture.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "photo.jpg")
    assert loaded.mode == "RGB" and loaded.size == (40, 80)
    top, bottom = loaded.getpixel((20, 10)), loaded.getpixel((20, 70))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below


def test_load_image_flattens_alpha_onto_white(tmp_path: Path) -> None:
    picture = Image.new("RGBA", (3, 1))
    picture.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    picture.save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert loaded.mode == "RGB"
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (10, 20, 30), (127, 127, 127)]


@pytest.mark.parametrize("name,content", [("notes.txt", b"not a picture\n"), ("cut.png", b"\x89PNG\r\n\x1a\n\0\0")])
def test_load_image_refuses_non_images(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UsageError, match=f"cannot read image {tmp_path / name}: "):
        load_image(tmp_path / name)
    with pytest.raises(UsageError, match="cannot read image .*missing.png"):
        load_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- saving pictures


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_to_pil_matches_the_unclip_pipelines(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 17, 23, generator=gen) * 2.4 - 1.2).to(dtype)
    images[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.5 / 255 * 2 - 1, 1.5 / 255 * 2 - 1, 0.0])  # rounding ties
    # The pipelines' own post-processing (diffusers UnCLIPPipeline.__call__, output_type "np" then "pil").
    expected = (images * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    assert np.array_equal(to_unit_range(images).permute(0, 2, 3, 1).numpy(), expected)
    for ours, reference in zip(to_pil(images), numpy_to_pil(expected), strict=True):
        assert ours.mode == "RGB" and ours.size == (23, 17)
        assert np.array_equal(np.asarray(ours), np.asarray(reference))
