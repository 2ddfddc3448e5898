"""The `shapes` model's architecture, written as the hub config files it ships with, and the export of its weights.

Every network is built from the same JSON dictionaries that are saved next to its weights, parsed by the loader's own
`from_config`, so what is trained is exactly what `dalle gen -m shapes` loads. The layout is Karlo's
(kakaobrain/karlo-v1-alpha) plus the image-variations repo's `image_encoder/` and `feature_extractor/`; the
widths are chosen so that all weights fit in 25 MB of fp16 safetensors and train on a 2-core CPU within the recipe's
time budget. Three deliberate differences from Karlo: the decoder and the super-resolution stage predict x_0
(`prediction_type: sample`, see `train_diffusion.py`) instead of ε; the decoder has a fixed variance
(`variance_type: fixed_small_log`, 3 output channels) instead of a learned range; and the super-resolution stage
ships the same weights as `super_res_first` and `super_res_last`. Next to Karlo's files the folder holds `dalle.json`,
dalle's own settings for it: the model family and the default sampling settings.
"""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dalle_cli.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .train_data import DECODER_SIZE, IMAGE_SIZE

EMBED = 128  # CLIP width, CLIP projection, prior embedding (768 in Karlo)
MAX_LENGTH = 24  # tokens per prompt, start and end included (77 in Karlo); the grammar needs at most 16
VOCAB_SIZE = 700  # 512 byte symbols + BPE merges + 2 specials
DECODER_CHANNELS = (32, 64, 96, 128)
SR_CHANNELS = (16, 32, 64)
TIME_EMBED = 4 * DECODER_CHANNELS[0]
DIFFUSERS_VERSION = "0.42.1"  # the config format written, as `save_pretrained` of that version writes it
WEIGHTS = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}


def _clip_tower(layers: int) -> dict[str, Any]:
    return {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": EMBED,
            "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4 * EMBED,
            "layer_norm_eps": 1e-5, "num_attention_heads": 4, "num_hidden_layers": layers, "projection_dim": EMBED,
            "torch_dtype": "float16"}


def text_encoder_config(vocab: dict[str, int]) -> dict[str, Any]:
    """transformers' CLIPTextModelWithProjection config; the end token pools (a real `eos_token_id`, not Karlo's
    legacy 2)."""
    return {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model", **_clip_tower(3),
            "vocab_size": len(vocab), "max_position_embeddings": MAX_LENGTH, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["!"]}


def image_encoder_config() -> dict[str, Any]:
    """transformers' CLIPVisionModelWithProjection config: a ViT on 32 px images in 8 px patches."""
    return {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model", **_clip_tower(3),
            "image_size": DECODER_SIZE, "patch_size": 8, "num_channels": 3}


def feature_extractor_config() -> dict[str, Any]:
    """transformers' CLIPImageProcessor config: bicubic resize to 32 px, OpenAI CLIP's normalisation."""
    return {"crop_size": {"height": DECODER_SIZE, "width": DECODER_SIZE}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": list(OPENAI_CLIP_MEAN), "image_processor_type": "CLIPImageProcessor",
            "image_std": list(OPENAI_CLIP_STD), "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": DECODER_SIZE}}


def prior_config() -> dict[str, Any]:
    """diffusers' PriorTransformer config: 4 layers of 4 heads x 32 over MAX_LENGTH text tokens + 4 extra tokens."""
    return {"_class_name": "PriorTransformer", "_diffusers_version": DIFFUSERS_VERSION, "additional_embeddings": 4,
            "attention_head_dim": 32, "dropout": 0.0, "embedding_dim": EMBED, "num_attention_heads": 4,
            "num_embeddings": MAX_LENGTH, "num_layers": 4}


def text_proj_config() -> dict[str, Any]:
    return {"_class_name": "UnCLIPTextProjModel", "_diffusers_version": DIFFUSERS_VERSION,
            "clip_embeddings_dim": EMBED, "clip_extra_context_tokens": 4, "cross_attention_dim": EMBED,
            "time_embed_dim": TIME_EMBED}


def _unet_common(channels: tuple[int, ...], sample_size: int | None, groups: int) -> dict[str, Any]:
    return {"_diffusers_version": DIFFUSERS_VERSION, "act_fn": "silu", "block_out_channels": list(channels),
            "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
            "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": groups,
            "sample_size": sample_size}


def decoder_config() -> dict[str, Any]:
    """diffusers' UNet2DConditionModel config in Karlo's block layout at 32 px, 3 output channels."""
    levels = len(DECODER_CHANNELS)
    return {"_class_name": "UNet2DConditionModel", **_unet_common(DECODER_CHANNELS, DECODER_SIZE, 16),
            "attention_head_dim": 32, "class_embed_type": "identity", "cross_attention_dim": EMBED,
            "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * (levels - 1),
            "dual_cross_attention": False, "in_channels": 3, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "num_class_embeds": None, "only_cross_attention": False, "out_channels": 3,
            "resnet_time_scale_shift": "scale_shift",
            "up_block_types": ["SimpleCrossAttnUpBlock2D"] * (levels - 1) + ["ResnetUpsampleBlock2D"],
            "upcast_attention": False, "use_linear_projection": False}


def super_res_config(first: bool) -> dict[str, Any]:
    """diffusers' UNet2DModel config of the attention-free 32 -> 64 px upsampler (noisy image + upscaled input);
    as in Karlo, only `super_res_first` records the sample size."""
    levels = len(SR_CHANNELS)
    return {"_class_name": "UNet2DModel", **_unet_common(SR_CHANNELS, IMAGE_SIZE if first else None, 8),
            "add_attention": False, "attention_head_dim": 8, "down_block_types": ["ResnetDownsampleBlock2D"] * levels,
            "in_channels": 6, "out_channels": 3, "resnet_time_scale_shift": "default",
            "time_embedding_type": "positional", "up_block_types": ["ResnetUpsampleBlock2D"] * levels}


def scheduler_config(prediction_type: str, clip_sample_range: float) -> dict[str, Any]:
    """diffusers' UnCLIPScheduler config: squaredcos_cap_v2, 1000 steps, fixed small variance."""
    return {"_class_name": "UnCLIPScheduler", "_diffusers_version": DIFFUSERS_VERSION, "clip_sample": True,
            "clip_sample_range": clip_sample_range, "num_train_timesteps": 1000, "prediction_type": prediction_type,
            "variance_type": "fixed_small_log"}


# Every stage predicts x_0: the prior as Karlo's does (with Karlo's clip_sample_range), the image stages for the
# reasons in `train_diffusion.py`.
SCHEDULERS = {"prior_scheduler": scheduler_config("sample", 5.0), "decoder_scheduler": scheduler_config("sample", 1.0),
              "super_res_scheduler": scheduler_config("sample", 1.0)}

# The sampling defaults were chosen on validation seeds for the shipped weights (guidance 2/2 followed prompts best of
# 2/2, 4/4 and 2/1, at 15 + 15 + 7 steps; see the README's shapes section), and the fast preset (the ancestral
# samplers at 3 + 13 + 2 steps) on validation seeds among budgets of at most half the default's network calls (the
# README's speed section), so a folder the recipe writes samples as `dalle gen -m shapes` does. A fixed-noise
# interpolation tries 4 noises (the README's manipulations section: its paths' similarity to the first input then
# falls in more of them, since the noise kept draws the inputs at their own size and place).
DALLE_SETTINGS: dict[str, Any] = {
    "_about": "dalle's settings for this model folder: its family, default sampling settings and fast preset "
              "(see dalle_cli/sources.py)",
    "family": "unclip",
    "defaults": {"prior_steps": 15, "decoder_steps": 15, "sr_steps": 7, "prior_guidance": 2.0,
                 "decoder_guidance": 2.0, "noise_candidates": 4},
    "fast": {"sampler": "ddpm", "prior_steps": 3, "decoder_steps": 13, "sr_steps": 2},
}

MODEL_INDEX = {
    "_class_name": "UnCLIPPipeline", "_diffusers_version": DIFFUSERS_VERSION,
    "decoder": ["diffusers", "UNet2DConditionModel"], "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
    "prior": ["diffusers", "PriorTransformer"], "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
    "super_res_first": ["diffusers", "UNet2DModel"], "super_res_last": ["diffusers", "UNet2DModel"],
    "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "text_proj": ["unclip", "UnCLIPTextProjModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}


def write_json(path: Path, data: dict[str, Any], sort_keys: bool = True) -> None:
    """Write `data` to `path` (parents created) as JSON indented by 2 with a final newline; keys sorted, as
    `save_pretrained` writes hub configs, unless `sort_keys` is false."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def save_component(folder: Path, config: dict[str, Any], module: nn.Module, library: str) -> None:
    """Write `config.json` and the module's state dict as fp16 safetensors under `folder`; `library` is "diffusers"
    or "transformers", which decides the weights' file name."""
    write_json(folder / "config.json", config)
    state = {key: tensor.detach().to(torch.float16).contiguous() for key, tensor in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS[library]), metadata={"format": "pt"})


def write_static_files(out: Path) -> None:
    """The files that hold no weights: model_index.json, the three scheduler configs, the feature extractor, and
    dalle.json (in DALLE_SETTINGS' own key order, which reads as documentation)."""
    write_json(out / "model_index.json", MODEL_INDEX)
    write_json(out / "dalle.json", DALLE_SETTINGS, sort_keys=False)
    for name, config in SCHEDULERS.items():
        write_json(out / name / "scheduler_config.json", config)
    write_json(out / "feature_extractor" / "preprocessor_config.json", feature_extractor_config())


def weights_size(out: Path) -> int:
    """Total bytes of the safetensors files under `out`."""
    return sum(p.stat().st_size for p in out.rglob("*.safetensors"))

