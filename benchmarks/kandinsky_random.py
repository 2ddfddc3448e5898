"""A Kandinsky 2.2 checkpoint with random weights, built with dalle's own modules and saved in its two hub layouts.

Full size (`small=False`) uses the configs of tests/data/reference/kandinsky-community__kandinsky-2-2-{prior,decoder},
with the keys that were not seen filled in as benchmarks/param_counts.py's `KANDINSKY_ASSUMED` says (its component
list is reused as it is); `small=True` keeps their block layout at the widths of tests/tiny_kandinsky.py, for a CPU
run. No diffusers or transformers is needed: dalle's parameter names are the hub checkpoint keys, so `state_dict()`
saved as safetensors next to the config is a prior folder (`KandinskyV22PriorPipeline`'s layout) and a decoder folder
(`KandinskyV22Pipeline`'s) that both dalle and diffusers load. The weights are stored in `Recipe.dtype` (fp16 on the
GPU: the hub stores all but the image encoder in fp32, but fp16 files halve the writes and reads, and every run
casts to fp16 or bf16 anyway; the load times are those of fp16 files).

What keeps the images informative, so that a max |Δ| between two implementations measures their networks:
- The decoder's DDPM scheduler keeps the real schedule (linear betas 0.00085-0.012, steps_offset 1, no clipping) but
  by default (`prediction="sample"`) predicts the sample, as the tests' tiny model does. With the real epsilon
  prediction a random UNet's ε ≈ 0 makes x_0 = x_t / √ᾱ_t, the seeds' noise blown up 24 times at the first step
  (t = 991) and never clipped (clip_sample is false): the latents end far outside what MoVQ maps into [-1, 1] and
  the images saturate. With sample prediction the last latents are the guided UNet output itself. The prediction
  type changes one elementwise formula per step, so timings are the same; `prediction="epsilon"` keeps the real
  config.
- The UNet's output convolution is scaled by `DAMP`, which sets the scale of the latents MoVQ decodes (the guided
  output uncond + 4 (cond - uncond) of the last step). MoVQ's SpatialNorms modulate every decoder level by 1x1
  convolutions of the latents, so with small latents their biases dominate and the images hardly depend on the UNet;
  with large ones more of MoVQ's output lands on the clip. Measured on the CPU with this module's initialisation, at
  a quarter of the UNet's widths (block_out_channels 96/192/288/384, the real depth), the full-size MoVQ, two layers
  per tower, 256×256 and 10 decoder steps (prompts 1 and 4 of gpu_check, seeds 0 and 1), by damping factor:
  latents std 0.07 / 0.56 / 0.75 / 0.99 / 1.59 (0.05 / 0.5 / 0.7 / 1 / 2); pixels in [0, 1] std 0.06 / 0.07 / 0.10 /
  0.13 / 0.16, on the clip 0 / 0.7 / 1.4 / 2.4 / 3.8 %; mean |change| of the image when its latents are zeroed, how
  much it depends on the UNet, 0.017 / 0.052 / 0.067 / 0.085 / 0.11. 0.7 keeps about 1 % on the clip with 80 % of the
  undamped dependence, and a margin should the full-width UNet's output be larger. (The tests' 0.05 would leave
  images that are mostly MoVQ's own bias pattern; with the epsilon scheduler at 0.7 the latents had a std of 20 and
  90 % of the pixels sat on the clip.)
- Parameters the constructors leave unset get values: the prior's as in benchmarks/karlo_random.py (its CLIP
  statistics, position and prd embeddings), and the image encoder's class embedding (torch.empty, as transformers
  leaves it to its init: normal with std width^-0.5, transformers' value). The zero-image embedding is made from it
  and the position embeddings alone: a zero picture's patches embed to zero.
"""

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from karlo_random import count_flops, mark_built, randomize_prior, reused_weights, save_network, write_json
from param_counts import DECODER, PRIOR, _kandinsky

from dalle_cli.configs import read_json

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "data" / "clip_tokenizer"  # vocab.json + merges.txt; the pad token is set on saving
RECIPE_VERSION = 1  # bump when the weights a recipe gives change, so a saved folder is rebuilt
DAMP = 0.7  # the UNet's output convolution: see the module docstring

# Which folder each network goes to, and its weights file (transformers names its file model.safetensors).
NETWORKS: dict[str, tuple[str, str]] = {
    "text_encoder": ("prior", "model.safetensors"),
    "prior": ("prior", "diffusion_pytorch_model.safetensors"),
    "image_encoder": ("prior", "model.safetensors"),
    "unet": ("decoder", "diffusion_pytorch_model.safetensors"),
    "movq": ("decoder", "diffusion_pytorch_model.safetensors"),
}
# The raw config and dalle's builder of each network at full size, exactly as benchmarks/param_counts.py builds them.
_FULL: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], torch.nn.Module]]] = {
    name: (raw, build) for name, raw, _, build in _kandinsky()}
# tests/tiny_kandinsky.py's widths laid over the full configs (everything else stays the real model's).
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "projection_dim": 32},
    "prior": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "embedding_dim": 32},
    "image_encoder": {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": 32, "patch_size": 8, "projection_dim": 32},
    "unet": {"block_out_channels": [16, 32, 32, 48], "layers_per_block": 1, "norm_num_groups": 8,
             "attention_head_dim": 8, "cross_attention_dim": 24, "encoder_hid_dim": 32,
             "addition_embed_type_num_heads": 8, "sample_size": 8},
    # SpatialNorm's GroupNorm has 32 groups whatever the config says, so every width is a multiple of 32.
    "movq": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "num_vq_embeddings": 64},
}
SMALL_PROCESSOR = {"size": 32, "crop_size": 32}  # the small image encoder's image_size


@dataclass(frozen=True)
class Recipe:
    """Everything the saved weights depend on; a folder whose recipe.json matches is reused instead of rebuilt."""

    small: bool
    dtype: str  # the dtype the weights are stored in: "fp16" or "fp32"
    seed: int = 0
    prediction: str = "sample"  # the decoder scheduler's prediction_type; see the module docstring
    damp: dict[str, float] = field(default_factory=lambda: {"unet": DAMP})
    version: int = RECIPE_VERSION


def folders(root: Path) -> tuple[Path, Path]:
    """The (prior, decoder) folders `save_random_kandinsky` writes under `root`."""
    return root / "prior", root / "decoder"


def network_config(name: str, small: bool) -> dict[str, Any]:
    """The raw `config.json` of one network: the full-size one, with the toy widths laid over it when `small`."""
    raw = _FULL[name][0]
    return {**raw, **SMALL_OVERRIDES[name]} if small else dict(raw)


def build_network(name: str, raw: dict[str, Any]) -> torch.nn.Module:
    """dalle's module for network `name` from its raw config, on the current default device, initialised by
    PyTorch's default `reset_parameters` (use `torch.device("meta")` for a free, shape-only copy)."""
    return _FULL[name][1](raw)


def _randomize(name: str, module: torch.nn.Module, damp: dict[str, float]) -> None:
    """Give the parameters the constructors leave unset values and damp the UNet (see the module docstring)."""
    with torch.no_grad():
        if name == "prior":
            randomize_prior(module)
        elif name == "image_encoder":
            embedding = module.vision_model.embeddings.class_embedding
            embedding.normal_(0.0, embedding.numel() ** -0.5)
        elif name in damp:
            module.conv_out.weight.mul_(damp[name])
            module.conv_out.bias.mul_(damp[name])


def _save_tokenizer(folder: Path) -> None:
    """CLIP's tokenizer files with the `<|endoftext|>` pad token of Kandinsky 2.2's prior repo."""
    shutil.copytree(TOKENIZER, folder)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        write_json(folder / name, {**read_json(folder / name), "pad_token": "<|endoftext|>"})


def save_random_kandinsky(root: Path, recipe: Recipe, device: torch.device,
                          log: Callable[[str], None] = print) -> dict[str, float]:
    """Write a random-weight Kandinsky 2.2 under `root`: its prior folder (model_index.json, tokenizer, text_encoder,
    prior, scheduler, image_encoder, image_processor) and decoder folder (model_index.json, unet, movq, scheduler),
    see `folders`.

    Each network is built on `device` in fp32, randomized, cast to `recipe.dtype` and saved as
    benchmarks/karlo_random.py's `save_network` does. If `root/recipe.json` already equals `recipe`, nothing is
    rebuilt. Returns {"build_s", "save_s", "bytes", "parameters", "reused"}: seconds spent building and saving, and
    the size and parameter count of the weights.
    """
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[recipe.dtype]
    reused = reused_weights(root, recipe, log)
    if reused is not None:
        return reused
    if root.exists():
        shutil.rmtree(root)
    prior, decoder = folders(root)
    build_s = save_s = 0.0
    size = parameters = 0
    for index, (name, (role, weights)) in enumerate(NETWORKS.items()):
        raw = network_config(name, recipe.small)
        count, saved, built, wrote = save_network(
            root / role / name, weights, raw, partial(build_network, name, raw),
            partial(_randomize, name, damp=recipe.damp), dtype, device,
            recipe.seed * 1000 + index)  # each network's weights independent of the others'
        parameters, size, build_s, save_s = parameters + count, size + saved, build_s + built, save_s + wrote
        log(f"  {name}: built and saved ({built + wrote:.1f} s)")
    for folder, reference in ((prior, PRIOR), (decoder, DECODER)):
        shutil.copy(reference / "model_index.json", folder / "model_index.json")
    shutil.copytree(PRIOR / "scheduler", prior / "scheduler")
    processor = read_json(PRIOR / "image_processor" / "preprocessor_config.json")
    write_json(prior / "image_processor" / "preprocessor_config.json",
               {**processor, **SMALL_PROCESSOR} if recipe.small else processor)
    _save_tokenizer(prior / "tokenizer")
    scheduler = read_json(DECODER / "scheduler" / "scheduler_config.SUPERSEDED-e5c52c4.json")  # main's real values
    write_json(decoder / "scheduler" / "scheduler_config.json", {**scheduler, "prediction_type": recipe.prediction})
    mark_built(root, recipe, parameters)
    return {"build_s": build_s, "save_s": save_s, "bytes": float(size), "parameters": float(parameters),
            "reused": 0.0}


def flops_per_image(root: Path, prior_steps: int, decoder_steps: int, width: int, height: int) -> dict[str, float]:
    """Floating-point operations to make one `width`×`height` image at batch 1 with guidance on, by network, counted
    with torch.utils.flop_counter.FlopCounterMode on shape-only (meta) copies built from the configs under `root`.

    Guided, the text encoder reads the prompt and the empty prompt (2 rows) once, the prior and the UNet run 2 rows
    per step, and MoVQ decodes the image once. The image encoder is left out: it runs once per checkpoint, for the
    zero-image embedding that dalle then caches. Elementwise work outside the networks is left out too.
    """
    meta = torch.device("meta")
    with meta:
        nets = {name: build_network(name, read_json(root / role / name / "config.json"))
                for name, (role, _) in NETWORKS.items() if name != "image_encoder"}

    text, prior, unet, movq = nets["text_encoder"], nets["prior"], nets["unet"], nets["movq"]
    tokens, dim = text.config.max_position_embeddings, prior.config.embedding_dim
    embeds = torch.zeros(2, dim, device=meta)
    hidden = torch.zeros(2, tokens, text.config.hidden_size, device=meta)
    mask = torch.ones(2, tokens, dtype=torch.bool, device=meta)
    latent = (height // movq.downscale, width // movq.downscale)
    per_call = {
        "text_encoder": count_flops(lambda: text(torch.zeros(2, tokens, dtype=torch.long, device=meta))),
        "prior": count_flops(lambda: prior(embeds, 999, proj_embedding=embeds, encoder_hidden_states=hidden,
                                     attention_mask=mask)),
        "unet": count_flops(lambda: unet(torch.zeros(2, unet.config.in_channels, *latent, device=meta), 999,
                                   image_embeds=embeds)),
        "movq": count_flops(lambda: movq.decode(torch.zeros(1, movq.config.embed_dim, *latent, device=meta))),
    }
    calls = {"text_encoder": 1, "prior": prior_steps, "unet": decoder_steps, "movq": 1}
    return {name: per_call[name] * calls[name] for name in per_call}
