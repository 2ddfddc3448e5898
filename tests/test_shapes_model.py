"""The embedded `shapes` model in weights/shapes: its files, its layout, and whether its images follow their prompts.

The model is loaded exactly as `dalle gen -m shapes` loads it (through the hub resolver and the component loader),
images are generated with the shipped default settings and fixed seeds, and the model-free evaluator judges them.
These are correctness checks, not timings. They fail, not skip, when the weights are missing or broken.
"""

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from safetensors import safe_open

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from dalle_cli.models.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from dalle_cli.models.unet import UNet, UNetConfig
from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings
from dalle_cli import load
from dalle_cli.families.unclip.pipeline import UnCLIP
from dalle_cli.shapes.evaluate import score
from dalle_cli.tokenizer import Tokenizer
from recipes.shapes import train_export

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "shapes"
COMPONENTS = ("text_encoder", "image_encoder", "prior", "text_proj", "decoder", "super_res_first", "super_res_last")
ONE_OBJECT = ["a red circle", "a blue square", "a yellow triangle", "a large black square",
              "a small green circle in the top left", "a pink circle in the bottom right"]
HELD_OUT = ["a green triangle", "a purple circle"]
TWO_OBJECTS = ["a red circle left of a blue square", "a black square above a yellow circle"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for these tests: on a busy 2-core machine two OpenMP threads spin against each other and
    run several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> UnCLIP:
    return load("shapes", device="cpu")  # the alias, so the registry's default settings apply


@pytest.fixture(scope="module")
def settings(model: UnCLIP) -> Settings:
    """The registry's defaults, which the README's table measures and `dalle gen -m shapes` uses."""
    return model.defaults


@pytest.fixture(scope="module")
def judged(model: UnCLIP, settings: Settings) -> dict[str, dict[str, bool | str]]:
    """Every test prompt generated once, in one batch, with fixed seeds, and judged by the evaluator."""
    prompts = ONE_OBJECT + HELD_OUT + TWO_OBJECTS
    images = model.generate(prompts, list(range(100, 100 + len(prompts))), settings)
    return {p: score(p, im) for p, im in zip(prompts, images)}


def test_weights_are_complete_fp16_and_small() -> None:
    index = json.loads((WEIGHTS / "model_index.json").read_text())
    assert index == train_export.MODEL_INDEX
    files = sorted(WEIGHTS.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == set(COMPONENTS)
    assert sum(f.stat().st_size for f in files) <= 25 * 1024 * 1024
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, path


def test_configs_are_the_recipe_architecture() -> None:
    """The shipped configs are the ones the training recipe builds (so the recipe rebuilds these weights)."""
    vocab = json.loads((WEIGHTS / "tokenizer" / "vocab.json").read_text())
    expected = {
        "text_encoder": train_export.text_encoder_config(vocab),
        "image_encoder": train_export.image_encoder_config(),
        "prior": train_export.prior_config(),
        "text_proj": train_export.text_proj_config(),
        "decoder": train_export.decoder_config(),
        "super_res_first": train_export.super_res_config(first=True),
        "super_res_last": train_export.super_res_config(first=False),
    }
    for name, config in expected.items():
        assert json.loads((WEIGHTS / name / "config.json").read_text()) == config, name
    for name, config in train_export.SCHEDULERS.items():
        assert json.loads((WEIGHTS / name / "scheduler_config.json").read_text()) == config, name
    preprocessor = json.loads((WEIGHTS / "feature_extractor" / "preprocessor_config.json").read_text())
    assert preprocessor == train_export.feature_extractor_config()
    tokenizer = Tokenizer.from_folder(WEIGHTS / "tokenizer")
    assert tokenizer.model_max_length == train_export.MAX_LENGTH
    # Every word of the grammar is one token, so no prompt of the grammar comes near the length limit.
    longest = "a picture of a large yellow triangle in the bottom right"
    assert tokenizer.count_tokens(longest) == len(longest.split()) + 2


def test_one_object_prompts_are_followed(judged) -> None:
    results = [judged[p] for p in ONE_OBJECT]
    assert sum(r["color"] for r in results) >= 5, results
    assert sum(r["shape"] for r in results) >= 5, results
    assert sum(r["all"] for r in results) >= 4, results
    positioned = [r for r in results if "position" in r]
    assert len(positioned) == 2 and all(r["position"] for r in positioned), positioned


def test_held_out_pairs_and_two_objects(judged) -> None:
    held_out = [judged[p] for p in HELD_OUT]
    two = [judged[p] for p in TWO_OBJECTS]
    assert sum(r["color"] and r["shape"] for r in held_out) >= 1, held_out
    assert sum(r["all"] for r in two) >= 1, two  # both colours, both shapes, their binding and the relation


def test_variations_keep_colour_and_shape(model: UnCLIP, settings: Settings) -> None:
    prompts = ["a red circle", "a blue square", "a yellow triangle"]
    sources = model.generate(prompts, [100, 101, 102], settings)
    variations = model.vary(sources, [7, 8, 9], settings)
    assert [im.size for im in variations] == [(64, 64)] * 3
    source_scores = [score(p, im) for p, im in zip(prompts, sources)]
    kept = [score(p, im) for p, im in zip(prompts, variations)]
    # A variation must show what its source shows, where the source was right.
    assert sum(s["color"] and s["shape"] and k["color"] and k["shape"] for s, k in zip(source_scores, kept)) >= 2


def test_same_seed_same_image(model: UnCLIP) -> None:
    """An image depends on its seed, not on the batch it was made in (up to float rounding of batched math)."""
    settings = Settings(prior_steps=5, decoder_steps=5, sr_steps=3)
    first = model.generate_tensors(["a red circle"], [5], settings)
    again = model.generate_tensors(["a red circle"], [5], settings)
    batched = model.generate_tensors(["a blue square", "a red circle"], [6, 5], settings)
    assert first.shape == (1, 3, 64, 64)
    assert torch.equal(first, again)
    assert (first[0] - batched[1]).abs().max() <= 1e-3
    assert (first[0] - batched[0]).abs().max() > 0.1


def _ours(name: str, config_cls: type, module_cls: type) -> torch.nn.Module:
    config = from_config(config_cls, read_json(WEIGHTS / name / "config.json"))
    return load_weights(lambda: module_cls(config), WEIGHTS / name, name, torch.float32, "cpu")


def test_reference_libraries_load_the_shipped_files() -> None:
    """The files are in the reference hub format: diffusers and transformers load every component and compute what
    ours compute (fp32, max |Δ| <= 1e-5), and transformers' tokenizer gives our token ids."""
    from diffusers import PriorTransformer as RefPrior
    from diffusers import UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    prompts = ["a red circle left of a blue square", "a large yellow triangle in the top left", ""]
    ours_tok = Tokenizer.from_folder(WEIGHTS / "tokenizer").encode(prompts)
    ref_tok = CLIPTokenizer.from_pretrained(WEIGHTS / "tokenizer")(prompts, padding="max_length", truncation=True)
    assert ref_tok["input_ids"] == ours_tok.input_ids
    ids = torch.tensor(ours_tok.input_ids)
    mask = torch.tensor(ours_tok.attention_mask).bool()

    def ref(cls: type, name: str) -> torch.nn.Module:
        return cls.from_pretrained(WEIGHTS / name, torch_dtype=torch.float32).eval()

    text = _ours("text_encoder", CLIPTextConfig, CLIPTextEncoder)
    embeds, hidden = text(ids)
    ref_text = ref(CLIPTextModelWithProjection, "text_encoder")(ids)
    assert (embeds - ref_text.text_embeds).abs().max() <= 1e-5
    assert (hidden - ref_text.last_hidden_state).abs().max() <= 1e-5

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    vision = _ours("image_encoder", CLIPVisionConfig, CLIPVisionEncoder)
    image_embeds = vision(pixels)
    assert (image_embeds - ref(CLIPVisionModelWithProjection, "image_encoder")(pixels).image_embeds).abs().max() <= 1e-5

    latents = torch.randn(3, image_embeds.shape[1], generator=g)
    prior = _ours("prior", PriorConfig, PriorTransformer)
    expected = ref(RefPrior, "prior")(latents, 500, proj_embedding=embeds, encoder_hidden_states=hidden,
                                      attention_mask=mask).predicted_image_embedding
    assert (prior(latents, 500, embeds, hidden, mask) - expected).abs().max() <= 1e-5

    text_proj = _ours("text_proj", TextProjConfig, TextProjection)
    context, time_embeds = text_proj(image_embeds, embeds, hidden, False)
    ref_context, ref_time = ref(UnCLIPTextProjModel, "text_proj")(
        image_embeddings=image_embeds, prompt_embeds=embeds, text_encoder_hidden_states=hidden,
        do_classifier_free_guidance=False)
    assert (context - ref_context).abs().max() <= 1e-5 and (time_embeds - ref_time).abs().max() <= 1e-5

    sample = torch.randn(3, 3, 32, 32, generator=g)
    context_mask = torch.nn.functional.pad(mask, (4, 0), value=True)
    decoder = _ours("decoder", UNetConfig, UNet)
    expected = ref(UNet2DConditionModel, "decoder")(sample, 300, encoder_hidden_states=context,
                                                    class_labels=time_embeds, attention_mask=context_mask).sample
    assert (decoder(sample, 300, context, time_embeds, context_mask) - expected).abs().max() <= 1e-5

    sample = torch.randn(2, 6, 64, 64, generator=g)
    for name in ("super_res_first", "super_res_last"):
        expected = ref(UNet2DModel, name)(sample, 700).sample
        assert (_ours(name, UNetConfig, UNet)(sample, 700) - expected).abs().max() <= 1e-5
