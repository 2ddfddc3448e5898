"""A complete, tiny Kandinsky 2.2 built with the reference libraries and saved in the exact layouts of its two hub repos.

The prior folder is `KandinskyV22PriorPipeline`'s (bigG-style towers at toy width, with `hidden_act` gelu and the
`<|endoftext|>` pad token; the prior's UnCLIPScheduler with clip_sample_range 10 and x_0 prediction, as the real
config); the decoder folder `KandinskyV22Pipeline`'s (a UNet in the real block layout, image-embedding conditioned,
8 channels out; MoVQ with spatial norm; the DDPM scheduler of the real repo). Random weights would drive the latents
far out of MoVQ's range, so the UNet's output convolution is damped and, by default, the decoder scheduler predicts
the sample, which keeps images informative; `prediction="epsilon"` gives the real scheduler config.

`make_tiny_inpaint_decoder` saves a `KandinskyV22InpaintPipeline` folder of the same design, its UNet reading 9
channels (latents, masked latents, keep mask), as kandinsky-community/kandinsky-2-2-decoder-inpaint: it pairs with
the same prior.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (DDPMScheduler, KandinskyV22InpaintPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline,
                       PriorTransformer, UNet2DConditionModel, UnCLIPScheduler, VQModel)
from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                          CLIPVisionConfig, CLIPVisionModelWithProjection)

TOKENIZER_DIR = Path(__file__).parent / "data" / "clip_tokenizer"
EMBED = 32  # the image-embedding width, 1280 in the real model


@dataclass(frozen=True)
class Pair:
    """The reference pipelines of one tiny Kandinsky 2.2."""

    prior: KandinskyV22PriorPipeline
    decoder: KandinskyV22Pipeline


def _damp(conv: torch.nn.Conv2d, factor: float) -> None:
    with torch.no_grad():
        conv.weight.mul_(factor)
        conv.bias.mul_(factor)


def build_reference(seed: int = 0, prediction: str = "sample") -> Pair:
    """Seeded random reference pipelines; `prediction` is the decoder scheduler's prediction_type."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=EMBED, intermediate_size=2 * EMBED, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=EMBED, hidden_act="gelu", eos_token_id=2, bos_token_id=0,
        pad_token_id=1,
    ))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=EMBED, hidden_act="gelu",
    ))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=EMBED // 2, num_layers=2, embedding_dim=EMBED,
                             num_embeddings=77, additional_embeddings=4)
    with torch.no_grad():
        prior.clip_mean.normal_(0.0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="<|endoftext|>")
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    prior_pipe = KandinskyV22PriorPipeline(
        prior=prior, image_encoder=image_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                                  clip_sample_range=10.0, num_train_timesteps=1000),
        image_processor=processor,
    )
    unet, movq, scheduler = _decoder_parts(4, prediction)
    return Pair(prior_pipe, KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq))


def _decoder_parts(in_channels: int, prediction: str) -> tuple[UNet2DConditionModel, VQModel, DDPMScheduler]:
    """The decoder's UNet (reading `in_channels`), MoVQ and scheduler, drawn from the global RNG in that order."""
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=8, layers_per_block=1,
        block_out_channels=(16, 32, 32, 48),
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", norm_num_groups=8, attention_head_dim=8,
        cross_attention_dim=24, encoder_hid_dim=EMBED, encoder_hid_dim_type="image_proj",
        addition_embed_type="image", addition_embed_type_num_heads=8, resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    _damp(unet.conv_out, 0.05)
    movq = VQModel(
        # SpatialNorm's GroupNorm has 32 groups whatever the config says, so every width is a multiple of 32.
        in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=64, norm_num_groups=32,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_type="spatial", sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=prediction == "sample", steps_offset=1,
                              prediction_type=prediction, thresholding=False)
    return unet, movq, scheduler


def build_inpaint_decoder(seed: int = 1, prediction: str = "sample") -> KandinskyV22InpaintPipeline:
    """A seeded random reference inpainting decoder: the tiny decoder's design with a UNet reading 9 channels."""
    torch.manual_seed(seed)
    unet, movq, scheduler = _decoder_parts(9, prediction)
    return KandinskyV22InpaintPipeline(unet=unet, scheduler=scheduler, movq=movq)


def save_reference(pair: Pair, folder: Path) -> tuple[Path, Path]:
    """Save the pipelines to `folder/prior` and `folder/decoder` in the hub layouts; returns the two folders."""
    prior, decoder = folder / "prior", folder / "decoder"
    pair.prior.save_pretrained(prior, safe_serialization=True)
    pair.decoder.save_pretrained(decoder, safe_serialization=True)
    # The real tokenizer folder holds the slow-tokenizer files, with the <|endoftext|> pad token.
    shutil.rmtree(prior / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, prior / "tokenizer")
    special = json.loads((prior / "tokenizer" / "special_tokens_map.json").read_text())
    (prior / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = json.loads((prior / "tokenizer" / "tokenizer_config.json").read_text())
    (prior / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|endoftext|>"}))
    return prior, decoder


def make_tiny_kandinsky(folder: Path, seed: int = 0, prediction: str = "sample") -> tuple[Path, Path]:
    """Build and save a tiny Kandinsky 2.2 (see `save_reference`)."""
    return save_reference(build_reference(seed, prediction), folder)


def make_tiny_inpaint_decoder(folder: Path, seed: int = 1, prediction: str = "sample") -> Path:
    """Build and save a tiny inpainting decoder (`build_inpaint_decoder`) to `folder` in the hub layout."""
    build_inpaint_decoder(seed, prediction).save_pretrained(folder, safe_serialization=True)
    return folder
