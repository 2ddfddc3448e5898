"""The image-side stages of the `shapes` recipe: the decoder (with the text projection) and the super-resolution UNet.

Both predict the clean image x_0 ("sample" prediction), trained with the mean squared error to it. Per noise level
that is the ε loss of Ho et al. (2020, eq. 14) weighted by the inverse signal-to-noise ratio (1 - ᾱ_t) / ᾱ_t:
uniform in t, it spends the small networks' capacity on the noisy steps that decide colour, shape and layout, and
a prediction of x_0 keeps the few-step samplers (15 to 25 decoder, 7 super-resolution steps) from leaving noise
on the flat white background, which ε prediction did at this budget. Classifier-free guidance is unchanged by the
choice: for one x_t, x_0 is an affine function of ε, so guiding either gives the same step.
- Decoder (Ramesh et al. 2022, §2.1): a 32 px UNet conditioned on the CLIP image embedding of its target, through the
  text projection (added to the time embedding and as 4 extra context tokens), and on the CLIP text token states.
  For classifier-free guidance the image embedding is replaced by the learned null embedding 10% of the time and the
  caption by the empty prompt 50% of the time, the rates of the paper.
- Super-resolution (§2.1, App. C): a UNet without attention that reads the noisy 64 px image next to the bicubic
  upsampling of the 32 px image; the low-resolution input is corrupted with a little Gaussian noise, since at
  sampling time it is the decoder's imperfect output, not a clean downsample.
"""

import random

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dalle_cli.configs import from_config
from dalle_cli.models.clip_text import CLIPTextEncoder
from dalle_cli.models.clip_vision import CLIPVisionEncoder
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from dalle_cli.models.unet import UNet, UNetConfig
from dalle_cli.tokenizer import Tokenizer

from .train_common import EMA, ForwardProcess, Optimizer, StageBudget, run_stage, setup_logging
from .train_data import clip_features, downsample, sample_batch, upsample
from .train_export import decoder_config, super_res_config, text_proj_config

DECODER_BATCH = 24
SR_BATCH = 16
DROP_IMAGE = 0.1  # image embedding -> learned null embedding
DROP_CAPTION = 0.5  # caption -> ""
SR_INPUT_NOISE = 0.1  # largest standard deviation of the noise added to the low-resolution input


def zero_output(unet: UNet) -> None:
    """Start the UNet at predicting zero, a mid-grey image (ADM's zero-initialised output layer, Dhariwal & Nichol
    2021, App. A)."""
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


class Decoder(torch.nn.Module):
    """The text projection and the decoder UNet, trained as one network."""

    def __init__(self) -> None:
        super().__init__()
        self.text_proj = TextProjection(from_config(TextProjConfig, text_proj_config()))
        self.unet = UNet(from_config(UNetConfig, decoder_config()))
        zero_output(self.unet)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Predict x_0 for x_t [B, 3, 32, 32], conditioned as the pipeline conditions it (context = 4 extra tokens
        + text token states, the extra tokens always attended to)."""
        context, time_embeds = self.text_proj(image_embeds, text_embeds, text_states, False)
        mask = F.pad(text_mask, (self.text_proj.config.clip_extra_context_tokens, 0), value=True)  # [B, 4 + L]
        return self.unet(xt, t, encoder_hidden_states=context, class_labels=time_embeds, attention_mask=mask)


def train_decoder(tokenizer: Tokenizer, text: CLIPTextEncoder, vision: CLIPVisionEncoder, budget: StageBudget,
                  rng: random.Random, seed: int) -> Decoder:
    """Train the decoder on the frozen CLIP towers; returns the weight average."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    decoder = Decoder()
    optimizer = Optimizer(list(decoder.parameters()), lr=5e-4, weight_decay=0.0)
    ema = EMA(decoder)
    process = ForwardProcess()

    def train_step() -> dict[str, float]:
        batch = sample_batch(rng, DECODER_BATCH)
        small = downsample(batch.images)  # [B, 3, 32, 32]
        captions = ["" if rng.random() < DROP_CAPTION else c for c in batch.captions]
        features = clip_features(tokenizer, text, vision, captions, small)
        drop = torch.rand(DECODER_BATCH, 1, generator=generator) < DROP_IMAGE  # [B, 1]
        null = decoder.text_proj.learned_classifier_free_guidance_embeddings
        image_embeds = torch.where(drop, null.expand_as(features.image_embeds), features.image_embeds)
        t, _, xt = process.noise(small, generator)
        predicted = decoder(xt, t, image_embeds, features.text_embeds, features.text_states, features.text_mask)
        loss = F.mse_loss(predicted, small)
        optimizer.step(loss)
        ema.update(decoder)
        return {"loss": loss.item()}

    run_stage(budget, train_step)
    return ema.module


def train_super_res(budget: StageBudget, rng: random.Random, seed: int) -> UNet:
    """Train the 32 -> 64 px upsampler; returns the weight average."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = UNet(from_config(UNetConfig, super_res_config(first=True)))
    zero_output(unet)
    optimizer = Optimizer(list(unet.parameters()), lr=5e-4, weight_decay=0.0)
    ema = EMA(unet)
    process = ForwardProcess()

    def train_step() -> dict[str, float]:
        batch = sample_batch(rng, SR_BATCH)
        low = upsample(downsample(batch.images))  # [B, 3, 64, 64]
        sigma = torch.rand(SR_BATCH, 1, 1, 1, generator=generator) * SR_INPUT_NOISE
        low = low + sigma * torch.randn(low.shape, generator=generator)
        t, _, xt = process.noise(batch.images, generator)
        predicted = unet(torch.cat([xt, low], dim=1), t)  # [B, 3, 64, 64]
        loss = F.mse_loss(predicted, batch.images)
        optimizer.step(loss)
        ema.update(unet)
        return {"loss": loss.item()}

    run_stage(budget, train_step)
    return ema.module


def super_res_worker(seconds: float, max_steps: int, seed: int, weights: str, log_path: str, threads: int) -> None:
    """Entry point of the process that trains the super-resolution stage next to the others (it needs no CLIP):
    writes the averaged weights (fp32) to `weights`, with the steps taken in the file's metadata."""
    setup_logging(log_path)
    torch.set_num_threads(threads)
    budget = StageBudget("super_res", max_steps, seconds)
    unet = train_super_res(budget, random.Random(seed), seed)
    state = {key: tensor.contiguous() for key, tensor in unet.state_dict().items()}
    save_file(state, weights, metadata={"steps": str(budget.max_steps), "seconds": f"{budget.elapsed():.0f}"})
