"""A Karlo checkpoint with random weights, built with dalle's own modules and saved in the hub layout.

Full size (`small=False`) uses Karlo's real configs from tests/data/reference; `small=True` keeps their block layout at
the tests' toy widths (tests/tiny_karlo.py's defaults), for a CPU run; `narrow=True` keeps every depth, block type,
attention layout and resolution of Karlo's configs at 1/32 of their widths (`WIDTH_KEYS`), for a CPU benchmark with
Karlo's real layer counts (benchmarks/pipeline_speed.py). No diffusers or transformers is needed:
dalle's parameter names are the hub checkpoint keys, so `state_dict()` saved as safetensors next to the real
`config.json` is a folder that both dalle and diffusers' UnCLIPPipeline load.

What keeps the images informative, so that a max |Δ| between two implementations measures their networks:
- Random ε-predictors output ε ≈ 0 whatever the input, so with Karlo's epsilon schedulers the predicted
  x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t is the noise blown up by 1/√ᾱ_t and clipped to ±1 from the first step: the
  images end up as the sign pattern of the seeds' noise, most pixels sit on the clip, and every network's
  contribution enters only through a near-zero ε. So by default (`prediction="sample"`) the decoder and
  super-resolution schedulers keep Karlo's variance types, clip ranges and timesteps but predict the sample, as the
  tests' tiny model does; x_0 is then the network output itself and every pixel depends on all four networks.
  The prediction type changes one elementwise formula per step, so timings are the same. `prediction="epsilon"`
  keeps Karlo's scheduler configs byte for byte. The prior's scheduler is Karlo's as it is (it predicts the sample).
- The output convolutions are damped (`DAMP`) so that the network outputs, and the decoder's guided output
  uncond + 8 (cond - uncond), stay inside the ±1 clip rather than on it. An undamped output (GroupNorm, SiLU,
  then the convolution at PyTorch's default init) has a std of about 0.3 whatever the width; at a fifth of Karlo's
  widths (tests/tiny_karlo.py's SMALL) these factors gave a guided decoder output of std 0.27-0.34 and
  super-resolution outputs of std 0.2, with under 1 % of values clipped at the last step. The tests' 0.05 would
  give images of std 0.007, whose |Δ| would look 20 times better than at a real model's contrast; with Karlo's
  epsilon schedulers, 47 % of the pixels sat on the clip and two prompts differed by 0.009 on average (0.08 with
  the sample schedulers).
- Parameters the constructors leave at zero get values: the prior's CLIP statistics (std 0 would make every image
  embedding the mean, cutting the decoder off from the prior), its position and prd embeddings, and the text
  projection's learned unconditional embedding (with zeros the guided halves would differ less).
"""

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dalle_cli.configs import from_config, read_json
from dalle_cli.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from dalle_cli.models.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parent.parent
KARLO = ROOT / "tests" / "data" / "reference" / "kakaobrain__karlo-v1-alpha"
TOKENIZER = ROOT / "tests" / "data" / "clip_tokenizer"  # vocab.json + merges.txt + Karlo's tokenizer configs
RECIPE_VERSION = 1  # bump when the weights a recipe gives change, so a saved folder is rebuilt

# (config class, module class, weights file) per network; transformers names its file model.safetensors.
NETWORKS: dict[str, tuple[type, type, str]] = {
    "text_encoder": (CLIPTextConfig, CLIPTextEncoder, "model.safetensors"),
    "prior": (PriorConfig, PriorTransformer, "diffusion_pytorch_model.safetensors"),
    "text_proj": (TextProjConfig, TextProjection, "diffusion_pytorch_model.safetensors"),
    "decoder": (UNetConfig, UNet, "diffusion_pytorch_model.safetensors"),
    "super_res_first": (UNetConfig, UNet, "diffusion_pytorch_model.safetensors"),
    "super_res_last": (UNetConfig, UNet, "diffusion_pytorch_model.safetensors"),
}
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
# Output-convolution damping, measured at SMALL widths: see the module docstring.
DAMP = {"decoder": 0.2, "super_res_first": 0.7, "super_res_last": 0.7}

_TOY_UNET = {"block_out_channels": [16, 32, 32, 48], "layers_per_block": 1, "norm_num_groups": 8}
# The toy widths of tests/tiny_karlo.py's `Widths()`, laid over Karlo's configs (everything else stays Karlo's).
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "projection_dim": 32},
    "prior": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "embedding_dim": 32},
    "text_proj": {"clip_embeddings_dim": 32, "time_embed_dim": 64, "cross_attention_dim": 48},
    "decoder": {**_TOY_UNET, "sample_size": 16, "attention_head_dim": 8, "cross_attention_dim": 48},
    "super_res_first": {**_TOY_UNET, "sample_size": 32},
    "super_res_last": dict(_TOY_UNET),
}
# Karlo's real depths at reduced widths (`Recipe.narrow`): the keys of each network's config that are widths, all
# divided by NARROW_DIVISOR; every layer count, block type, attention layout and resolution stays Karlo's. Head
# counts stay Karlo's (the heads get narrower), as do the GroupNorm group sizes (10 channels a group, as 320 / 32),
# which keeps every channel count a multiple of its groups. The super-resolution UNets have no attention: their
# attention_head_dim is unused and stays. The one exception is the decoder's heads, see NARROW_HEADS.
NARROW_DIVISOR = 32
WIDTH_KEYS: dict[str, tuple[str, ...]] = {
    "text_encoder": ("hidden_size", "intermediate_size", "projection_dim"),
    "prior": ("embedding_dim", "attention_head_dim"),
    "text_proj": ("clip_embeddings_dim", "cross_attention_dim", "time_embed_dim"),
    "decoder": ("block_out_channels", "cross_attention_dim", "norm_num_groups"),
    "super_res_first": ("block_out_channels", "norm_num_groups"),
    "super_res_last": ("block_out_channels", "norm_num_groups"),
}
# The decoder's attention over the 32×32 level's 1,024 pixel tokens builds heads × 1,024 × 1,105 scores a layer,
# whatever the width: with Karlo's 10 heads (2 channels wide at these widths) the narrow decoder spent most of its time
# on those score matrices, a small share of the work at Karlo's widths (on one busy CPU thread, 0.61 s a call at batch
# 2, against 0.22 s with the heads below). So its heads are 10 channels wide: 2, 3 and 4 heads at the three attention
# levels, a fifth of Karlo's 10, 15 and 20.
NARROW_HEADS: dict[str, dict[str, Any]] = {"decoder": {"attention_head_dim": 10}}


@dataclass(frozen=True)
class Recipe:
    """Everything the saved weights depend on; a folder whose recipe.json matches is reused instead of rebuilt."""

    small: bool
    dtype: str  # the dtype the weights are stored in: "fp16" (Karlo's hub files are fp16) or "fp32"
    seed: int = 0
    prediction: str = "sample"  # the decoder's and super-resolution's prediction_type; see the module docstring
    damp: dict[str, float] = field(default_factory=lambda: dict(DAMP))
    version: int = RECIPE_VERSION
    narrow: bool = False  # Karlo's real depths at 1/NARROW_DIVISOR of its widths (only with small=False)


def _divided(value: Any, where: str) -> Any:
    """`value` (an int or a list of ints) divided by NARROW_DIVISOR, which must divide it."""
    if isinstance(value, list):
        return [_divided(v, where) for v in value]
    if value % NARROW_DIVISOR:
        raise ValueError(f"{where} = {value} is not a multiple of {NARROW_DIVISOR}")
    return value // NARROW_DIVISOR


def network_config(name: str, small: bool, narrow: bool = False) -> dict[str, Any]:
    """The raw `config.json` of one network: Karlo's, with the toy widths laid over it when `small`, or with its
    widths narrowed when `narrow` (`WIDTH_KEYS`, `NARROW_HEADS`)."""
    raw = read_json(KARLO / name / "config.json")
    if small and narrow:
        raise ValueError("narrow keeps Karlo's depths, small changes them: choose one")
    if small:
        return {**raw, **SMALL_OVERRIDES[name]}
    if narrow:
        widths = {key: _divided(raw[key], f"{name}.{key}") for key in WIDTH_KEYS[name]}
        return {**raw, **widths, **NARROW_HEADS.get(name, {})}
    return raw


def build_network(name: str, raw: dict[str, Any]) -> torch.nn.Module:
    """dalle's module for network `name` from its raw config, on the current default device, initialised by
    PyTorch's default `reset_parameters` (use `torch.device("meta")` for a free, shape-only copy)."""
    config_cls, module_cls, _ = NETWORKS[name]
    return module_cls(from_config(config_cls, raw))


def randomize_prior(prior: PriorTransformer) -> None:
    """Give the prior's zero-initialised parameters values: its CLIP statistics and its position and prd embeddings
    (see the module docstring)."""
    with torch.no_grad():
        prior.clip_mean.normal_(0.0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
        prior.positional_embedding.normal_(0.0, 0.02)
        prior.prd_embedding.normal_(0.0, 0.02)


def _randomize(name: str, module: torch.nn.Module, damp: dict[str, float]) -> None:
    """Give the zero-initialised parameters values and damp the output convolution (see the module docstring)."""
    with torch.no_grad():
        if name == "prior":
            randomize_prior(module)
        elif name == "text_proj":
            module.learned_classifier_free_guidance_embeddings.normal_(0.0, 1.0)
        elif name in damp:
            module.conv_out.weight.mul_(damp[name])
            module.conv_out.bias.mul_(damp[name])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented, key-sorted JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def reused_weights(folder: Path, recipe: Any, log: Callable[[str], None]) -> dict[str, float] | None:
    """`save_random_karlo`'s figures for a folder already built by `recipe` (its recipe.json equal to the recipe's
    fields), or None when it must be (re)built."""
    marker = folder / "recipe.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == recipe.__dict__):
        return None
    log(f"reusing the weights in {folder}")
    return {"build_s": 0.0, "save_s": 0.0, "bytes": float(sum(f.stat().st_size for f in folder.rglob("*.safetensors"))),
            "parameters": float(json.loads(marker.with_name("sizes.json").read_text())["parameters"]), "reused": 1.0}


def save_network(folder: Path, weights: str, raw: dict[str, Any], build: Callable[[], torch.nn.Module],
                 randomize: Callable[[torch.nn.Module], None], dtype: torch.dtype, device: torch.device,
                 seed: int) -> tuple[int, int, float, float]:
    """Build one network with `build()` on `device` in fp32 with torch seeded by `seed` (torch.nn.init on the
    accelerator is fast, and fp32 keeps the initialisation the same whatever the stored dtype), `randomize` it, cast
    it to `dtype`, copy it to the host and save `folder/config.json` (`raw`) and `folder/weights`, freeing it before
    returning, so that at most one network's fp32 copy is ever on `device`. Returns (parameters, bytes saved,
    seconds building, seconds saving)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        module = build()
    randomize(module)
    state = {k: v.to(dtype).contiguous().cpu() for k, v in module.state_dict().items()}
    parameters = sum(p.numel() for p in module.parameters())
    del module
    if device.type == "cuda":
        torch.cuda.synchronize()
    built = time.perf_counter()
    write_json(folder / "config.json", raw)
    save_file(state, str(folder / weights), metadata={"format": "pt"})
    return parameters, (folder / weights).stat().st_size, built - start, time.perf_counter() - built


def mark_built(folder: Path, recipe: Any, parameters: int) -> None:
    """Record that `folder` holds `recipe`'s weights; written last, so a folder cut short by a crash is rebuilt."""
    write_json(folder / "sizes.json", {"parameters": parameters})
    write_json(folder / "recipe.json", recipe.__dict__)


def save_random_karlo(folder: Path, recipe: Recipe, device: torch.device,
                      log: Callable[[str], None] = print) -> dict[str, float]:
    """Write a random-weight Karlo to `folder` (model_index.json, six networks, three schedulers, the tokenizer).

    Each network is built on `device` in fp32, randomized, cast to `recipe.dtype` and saved by `save_network`.
    If `folder/recipe.json` already equals `recipe`, nothing is rebuilt. Returns {"build_s", "save_s", "bytes",
    "parameters", "reused"}: seconds spent building and saving, and the size and parameter count of the weights.
    """
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[recipe.dtype]
    reused = reused_weights(folder, recipe, log)
    if reused is not None:
        return reused
    if folder.exists():
        shutil.rmtree(folder)
    build_s = save_s = 0.0
    size = parameters = 0
    for index, (name, (_, _, weights)) in enumerate(NETWORKS.items()):
        raw = network_config(name, recipe.small, recipe.narrow)
        count, saved, built, wrote = save_network(
            folder / name, weights, raw, partial(build_network, name, raw),
            partial(_randomize, name, damp=recipe.damp), dtype, device,
            recipe.seed * 1000 + index)  # each network's weights independent of the others'
        parameters, size, build_s, save_s = parameters + count, size + saved, build_s + built, save_s + wrote
        log(f"  {name}: built and saved ({built + wrote:.1f} s)")
    for name in SCHEDULERS:
        raw = read_json(KARLO / name / "scheduler_config.json")
        if name != "prior_scheduler":
            raw["prediction_type"] = recipe.prediction
        write_json(folder / name / "scheduler_config.json", raw)
    shutil.copy(KARLO / "model_index.json", folder / "model_index.json")
    shutil.copytree(TOKENIZER, folder / "tokenizer")
    mark_built(folder, recipe, parameters)
    return {"build_s": build_s, "save_s": save_s, "bytes": float(size), "parameters": float(parameters),
            "reused": 0.0}


def count_flops(fn: Callable[[], Any]) -> float:
    """The floating-point operations `fn()` runs, counted by torch's FlopCounterMode (on the meta device: free)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def flops_per_image(folder: Path, prior_steps: int, decoder_steps: int, sr_steps: int) -> dict[str, float]:
    """Floating-point operations to make one image at batch 1 with guidance on, by network, counted with
    torch.utils.flop_counter.FlopCounterMode on shape-only (meta) copies built from `folder`'s configs.

    Guided, the text encoder reads the prompt and the empty prompt (2 rows), the text projection runs once on 2
    rows, the prior and the decoder run 2 rows per step, and the super-resolution networks 1 row per step
    (`super_res_first` every step but the last). Elementwise work outside the networks is left out.
    """
    meta = torch.device("meta")
    with meta:
        nets = {name: build_network(name, read_json(folder / name / "config.json")) for name in NETWORKS}

    text, prior, proj, decoder = nets["text_encoder"], nets["prior"], nets["text_proj"], nets["decoder"]
    tokens, width = text.config.max_position_embeddings, text.config.hidden_size
    embeds = torch.zeros(2, prior.config.embedding_dim, device=meta)
    hidden = torch.zeros(2, tokens, width, device=meta)
    mask = torch.ones(2, tokens, dtype=torch.bool, device=meta)
    extra = proj.config.clip_extra_context_tokens
    context = torch.zeros(2, extra + tokens, proj.config.cross_attention_dim, device=meta)
    size = decoder.config.sample_size
    sr = nets["super_res_first"].config
    sr_input = torch.zeros(1, sr.in_channels, sr.sample_size, sr.sample_size, device=meta)
    per_call = {
        "text_encoder": count_flops(lambda: text(torch.zeros(2, tokens, dtype=torch.long, device=meta))),
        "prior": count_flops(lambda: prior(embeds, 999, proj_embedding=embeds, encoder_hidden_states=hidden,
                                     attention_mask=mask)),
        "text_proj": count_flops(lambda: proj(embeds[:1], embeds, hidden, True)),
        "decoder": count_flops(lambda: decoder(torch.zeros(2, decoder.config.in_channels, size, size, device=meta), 999,
                                         encoder_hidden_states=context,
                                         class_labels=torch.zeros(2, proj.config.time_embed_dim, device=meta),
                                         attention_mask=torch.ones(2, extra + tokens, dtype=torch.bool, device=meta))),
        "super_res_first": count_flops(lambda: nets["super_res_first"](sr_input, 999)),
        "super_res_last": count_flops(lambda: nets["super_res_last"](sr_input, 0)),
    }
    calls = {"text_encoder": 1, "prior": prior_steps, "text_proj": 1, "decoder": decoder_steps,
             "super_res_first": sr_steps - 1, "super_res_last": 1}
    return {name: per_call[name] * calls[name] for name in NETWORKS}
