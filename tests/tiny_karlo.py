"""A complete, tiny Karlo checkpoint built with the reference libraries and saved in the exact hub layout.

The configs keep Karlo's block layout (ResnetDownsample + SimpleCrossAttn decoder, four-level attention-free
super-resolution UNets, a CLIP text encoder with the legacy `eos_token_id: 2`, the "!" pad token) at toy widths.
Random weights drive images to ±1, which would make pixel comparisons meaningless: an untrained ε-predictor
outputs ε ≈ 0, so the predicted x_0 = x_t / √ᾱ_t is clipped to ±1 from the first step. So the output convolutions
are damped and, by default, the decoder and super-resolution schedulers predict the sample (x_0 = the damped output),
which keeps images inside (0, 1) and every pixel informative. `prediction="epsilon"` gives Karlo's exact scheduler
configs instead. The prior's CLIP statistics are given non-trivial values.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPPipeline, UnCLIPScheduler
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

TOKENIZER_DIR = Path(__file__).parent / "data" / "clip_tokenizer"
SR_BLOCKS = ("ResnetDownsampleBlock2D",) * 4


@dataclass(frozen=True)
class Widths:
    """The sizes of a Karlo-shaped model. The defaults are the tests' toy; `SMALL` is a fifth of Karlo's widths
    at Karlo's resolutions, for benchmarks."""

    embed: int = 32  # CLIP width = projection = prior embedding, as 768 is in Karlo
    clip_layers: int = 2
    prior_heads: int = 2
    prior_layers: int = 2
    block_out: tuple[int, ...] = (16, 32, 32, 48)
    layers_per_block: int = 1
    groups: int = 8
    head_dim: int = 8
    cross: int = 48
    decoder_size: int = 16
    sr_size: int = 32


SMALL = Widths(embed=192, clip_layers=6, prior_heads=6, prior_layers=6, block_out=(64, 128, 192, 256),
               layers_per_block=2, groups=16, head_dim=32, cross=384, decoder_size=64, sr_size=256)


def _damp(conv: torch.nn.Conv2d, factor: float) -> None:
    with torch.no_grad():
        conv.weight.mul_(factor)
        conv.bias.mul_(factor)


def build_reference(
    seed: int = 0, prediction: str = "sample", w: Widths = Widths()
) -> tuple[UnCLIPPipeline, CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """The reference pipeline, the reference image encoder and its processor, with seeded random weights;
    `prediction` is the decoder's and super-resolution's prediction_type."""
    torch.manual_seed(seed)
    EMBED = w.embed
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=EMBED, intermediate_size=2 * EMBED, num_hidden_layers=w.clip_layers,
            num_attention_heads=4,
            max_position_embeddings=77, projection_dim=EMBED, hidden_act="quick_gelu", eos_token_id=2,
            bos_token_id=0, pad_token_id=1,
        )
    )
    prior = PriorTransformer(
        num_attention_heads=w.prior_heads, attention_head_dim=EMBED // w.prior_heads,
        num_layers=w.prior_layers, embedding_dim=EMBED, num_embeddings=77,
        additional_embeddings=4,
    )
    with torch.no_grad():
        prior.clip_mean.normal_(0.0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
    block_out = w.block_out
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=4, clip_embeddings_dim=EMBED, time_embed_dim=4 * block_out[0],
        cross_attention_dim=w.cross,
    )
    decoder = UNet2DConditionModel(
        sample_size=w.decoder_size, in_channels=3, out_channels=6, layers_per_block=w.layers_per_block,
        block_out_channels=block_out,
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", norm_num_groups=w.groups, attention_head_dim=w.head_dim,
        cross_attention_dim=w.cross, class_embed_type="identity", resnet_time_scale_shift="scale_shift",
    )
    _damp(decoder.conv_out, 0.05)
    super_res = [
        UNet2DModel(
            sample_size=w.sr_size if i == 0 else None, in_channels=6, out_channels=3,
            layers_per_block=w.layers_per_block, block_out_channels=block_out, down_block_types=SR_BLOCKS,
            up_block_types=("ResnetUpsampleBlock2D",) * 4, add_attention=False, norm_num_groups=w.groups,
        )
        for i in range(2)
    ]
    for unet in super_res:
        _damp(unet.conv_out, 0.05)
    schedulers = {
        "prior_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000, clip_sample_range=5.0
        ),
        "decoder_scheduler": UnCLIPScheduler(
            variance_type="learned_range", prediction_type=prediction, num_train_timesteps=1000
        ),
        "super_res_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type=prediction, num_train_timesteps=1000
        ),
    }
    pipe = UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        text_proj=text_proj, super_res_first=super_res[0], super_res_last=super_res[1], **schedulers,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED, intermediate_size=2 * EMBED, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=EMBED, hidden_act="quick_gelu",
        )
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return pipe, image_encoder, processor


def make_tiny_karlo(folder: Path, seed: int = 0, prediction: str = "sample") -> Path:
    """Save the tiny reference model to `folder` in Karlo's hub layout, plus `image_encoder/` and
    `feature_extractor/` as the image-variations repo holds them. Returns `folder`."""
    return save_reference(build_reference(seed, prediction), folder)


def save_reference(
    reference: tuple[UnCLIPPipeline, CLIPVisionModelWithProjection, CLIPImageProcessor], folder: Path
) -> Path:
    """Save `build_reference`'s objects to `folder` in Karlo's hub layout (see `make_tiny_karlo`)."""
    pipe, image_encoder, processor = reference
    pipe.save_pretrained(folder, safe_serialization=True)
    image_encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    processor.save_pretrained(folder / "feature_extractor")
    # The real repo names the text projection's library "unclip" (see the reference model_index.json).
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_proj"] = ["unclip", "UnCLIPTextProjModel"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    # The real tokenizer folder holds the slow-tokenizer files (vocab.json, merges.txt and Karlo's configs), not
    # the tokenizer.json that transformers 5 writes.
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, folder / "tokenizer")
    return folder
