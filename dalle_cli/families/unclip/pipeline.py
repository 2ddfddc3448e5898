"""Text to image and image variations with an unCLIP model (Ramesh et al. 2022, arXiv 2204.06125, §2).

The stages are public, and the operations compose them:
- `encode_text`: CLIP text embeddings, hidden states and token mask (with the empty prompt's rows under guidance);
- `encode_image`: the CLIP image embedding z_i of a picture;
- `prior`: text conditioning -> CLIP image embeddings (paper §2.2);
- `decode`: image embeddings (plus the text conditioning) -> 64 px images, from a given x_T or a drawn one;
- `upscale`: the two super-resolution UNets to 256 px (`super_res_first` every step but the last, `super_res_last`
  the last).
`generate` runs encode_text, prior, decode and upscale; `vary` runs encode_image, then decodes the embedding with an
empty prompt, as Karlo's image-variation sampler does.

Every stage draws its noise from the images' own generators (`engine.noise.ImageNoise`) in the reference's order, so
an image equals diffusers' `UnCLIPPipeline` / `UnCLIPImageVariationPipeline` given the same per-image generators.
A loaded model can be called from several threads at once: a call keeps its state in its own locals, and in low-VRAM
mode calls take turns on the accelerator (`engine.offload`).
"""

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ...api import Progress, ProgressCallback
from ...devices import resolve_device, resolve_dtype
from ...diffusion import schedule
from ...diffusion.guidance import guided
from ...engine.noise import ImageNoise, sample_stage, unclip_loop
from ...engine.model import Model
from ...engine.text import TextConditioning, encode_text
from ...errors import UsageError
from ...images import preprocess
from ...sources import ModelSource
from . import FAMILY
from .components import load_components, load_image_encoder
from .settings import UnCLIPSettings


def _silent(event: Progress) -> None:
    """The progress callback when the caller gives none."""


class UnCLIP(Model):
    """A loaded unCLIP model. Build it with `load_model` (or `dalle_cli.load`); call the operations `generate` and
    `vary`, or the stages, for batches of images."""

    family = FAMILY

    def prepare(self, operation: str) -> None:
        """Make sure `operation` ("generate" or "vary") can run: fetch and load the parts it needs (the image encoder
        for variations, downloaded on first use). Raises `UsageError` when this model cannot do it."""
        if operation == "generate" and self.parts.prior is None:
            raise UsageError(f"{self.info.name} has no prior, so it makes variations only", hint="vary")
        if operation == "vary":
            self._image_encoder()
        elif operation not in FAMILY.operations:
            raise UsageError(f"{self.info.name} cannot {operation} (it can {', '.join(FAMILY.operations)})")

    def _image_encoder(self) -> None:
        with self._loading:
            if self.parts.image_encoder is not None:
                return
            if self._source is None or not self._source.has("image_encoder"):
                raise UsageError(f"{self.info.name} has no image encoder, so it cannot make variations")
            folder = self._source.folder("image_encoder", self._on_notice)
            home = torch.device("cpu") if self.low_vram else self.device
            self.parts.image_encoder, self.parts.preprocess = load_image_encoder(folder, folder, self.dtype, home)

    # The operations.

    def generate_tensors(self, prompts: Sequence[str], seeds: Sequence[int], settings: UnCLIPSettings | None = None,
                         *, progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `generate`, but returns the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        s = self._check(list(prompts), list(seeds), settings, "generate")
        report = progress or _silent
        with self._running():
            guided_ = s.prior_guidance > 1.0 or s.decoder_guidance > 1.0  # as the reference: both stages, or neither
            noise = ImageNoise(seeds)
            text = self.encode_text(list(prompts), guided_)
            image_embeds = self.prior(text, noise, s, progress=report)
            small = self.decode(image_embeds, text, noise, s, progress=report)
            return self.upscale(small, noise, s, progress=report)

    def vary_tensors(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: UnCLIPSettings | None = None,
                     *, progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `vary`, but returns the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        s = self._check(list(images), list(seeds), settings, "vary")
        report = progress or _silent
        n = len(images)
        with self._running():
            report(Progress("encode", 1, 1, 0, n, n))
            image_embeds = self.encode_image(list(images))
            noise = ImageNoise(seeds)
            text = self.encode_text([""] * n, s.decoder_guidance > 1.0)
            small = self.decode(image_embeds, text, noise, s, progress=report)
            return self.upscale(small, noise, s, progress=report)

    def _check(self, inputs: list, seeds: list[int], settings: UnCLIPSettings | None,
               operation: str) -> UnCLIPSettings:
        """The settings to use, after refusing a call that cannot run before any network does."""
        self._pair(inputs, seeds)
        self.prepare(operation)
        s = settings or self.defaults
        if operation == "generate":
            schedule.timesteps(s.prior_steps, self.parts.prior_scheduler)
        schedule.timesteps(s.decoder_steps, self.parts.decoder_scheduler)
        schedule.timesteps(s.sr_steps, self.parts.super_res_scheduler)
        return s

    # The stages.

    def encode_text(self, prompts: list[str], guided: bool) -> TextConditioning:
        """The CLIP text conditioning of `prompts`; with `guided`, the empty prompt's rows are added first."""
        parts = self.parts
        with self._running():
            if not self.residency.holds(parts.text_encoder):  # variations hold it with the image encoder
                self.residency.hold(parts.text_encoder, *([parts.prior] if parts.prior is not None else []))
            return encode_text(parts.tokenizer, parts.text_encoder, prompts, "" if guided else None, self.device)

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """The CLIP image embeddings z_i [B, D] of `images` (any size; CLIP's preprocessing crops them)."""
        self.prepare("vary")
        parts = self.parts
        with self._running():
            self.residency.hold(parts.text_encoder, parts.image_encoder)
            pixels = preprocess(images, parts.preprocess).to(self.device, self.dtype)  # [B, 3, S, S]
            # One image at a time: a batched ViT differs in the last bits with the batch size, and a variation must
            # depend only on its own image and seed. The encoder runs once per image, so this costs little.
            return torch.cat([parts.image_encoder(p[None]) for p in pixels])  # [B, D]

    def prior(self, text: TextConditioning, noise: ImageNoise, settings: UnCLIPSettings, *,
              progress: ProgressCallback | None = None) -> torch.Tensor:
        """Sample CLIP image embeddings [B, D] from the prior (paper §2.2), guided as the reference does when
        `text.guided` (at `settings.prior_guidance`, which may be 1)."""
        prior, config = self.parts.prior, self.parts.prior_scheduler
        if prior is None or config is None:
            raise UsageError(f"{self.info.name} has no prior, so it makes variations only", hint="vary")
        report, n = progress or _silent, len(noise)
        steps = schedule.timesteps(settings.prior_steps, config)
        with self._running():
            self.residency.hold(self.parts.text_encoder, prior)

            def model(x: torch.Tensor, t: int) -> torch.Tensor:
                return prior(x, t, proj_embedding=text.embeds, encoder_hidden_states=text.hidden,
                             attention_mask=text.mask)

            run = guided(model, settings.prior_guidance) if text.guided else model

            def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
                out = run(x, t)
                report(Progress("prior", i + 1, len(steps), 0, n, n))
                return out

            x = noise.start((prior.config.embedding_dim,), text.embeds.dtype, self.device)
            return prior.post_process_latents(sample_stage(denoise, x, steps, noise, unclip_loop(config)))

    def decode(self, image_embeds: torch.Tensor, text: TextConditioning, noise: ImageNoise, settings: UnCLIPSettings,
               x_T: torch.Tensor | None = None, *, progress: ProgressCallback | None = None) -> torch.Tensor:
        """The decoder's 64 px images [B, 3, 64, 64] in [-1, 1] from image embeddings [B, D] and the text
        conditioning, guided when `text.guided`. Starts from `x_T` [B, 3, 64, 64] when given, else draws it from
        `noise` (which the reference does right after the prior's noise)."""
        parts = self.parts
        report, n = progress or _silent, len(noise)
        steps = schedule.timesteps(settings.decoder_steps, parts.decoder_scheduler)
        learned_variance = parts.decoder_scheduler.variance_type == "learned_range"
        with self._running():
            self.residency.hold(parts.text_proj, parts.decoder)
            context, time_embeds = parts.text_proj(image_embeds, text.embeds, text.hidden, text.guided)
            context_mask = F.pad(text.mask, (parts.text_proj.config.clip_extra_context_tokens, 0), value=True)

            def model(x: torch.Tensor, t: int) -> torch.Tensor:
                return parts.decoder(x, t, encoder_hidden_states=context, class_labels=time_embeds,
                                     attention_mask=context_mask)

            run = guided(model, settings.decoder_guidance, learned_variance) if text.guided else model

            def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
                out = run(x, t)
                report(Progress("decoder", i + 1, len(steps), 0, n, n))
                return out

            size = parts.decoder.config.sample_size
            x = x_T if x_T is not None else noise.start((parts.decoder.config.in_channels, size, size), self.dtype,
                                                         self.device)
            return sample_stage(denoise, x, steps, noise, unclip_loop(parts.decoder_scheduler)).clamp(-1, 1)

    def upscale(self, images: torch.Tensor, noise: ImageNoise, settings: UnCLIPSettings, *,
                progress: ProgressCallback | None = None) -> torch.Tensor:
        """Super-resolution of the decoder's images [B, 3, 64, 64] in [-1, 1] to [B, 3, 256, 256] in [-1, 1]."""
        parts = self.parts
        report, n = progress or _silent, len(noise)
        steps = schedule.timesteps(settings.sr_steps, parts.super_res_scheduler)
        with self._running():
            self.residency.hold(parts.super_res_first)
            size = parts.super_res_first.config.sample_size
            x = noise.start((parts.super_res_first.config.in_channels // 2, size, size), self.dtype, self.device)
            # Resampled in fp32: the CPU has no half-precision antialiased bicubic kernel, and it is more exact anyway.
            upscaled = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                                     antialias=self.device.type != "mps").to(images.dtype)  # [B, 3, size, size]

            def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
                unet = parts.super_res_last if i == len(steps) - 1 else parts.super_res_first
                self.residency.hold(unet)  # swaps in super_res_last for the last step in low-VRAM mode
                out = unet(torch.cat([x, upscaled], dim=1), t)
                report(Progress("super_res", i + 1, len(steps), 0, n, n))
                return out

            return sample_stage(denoise, x, steps, noise, unclip_loop(parts.super_res_scheduler))


def load_model(source: ModelSource, *, device: str = "auto", dtype: str = "auto", low_vram: bool = False,
               on_notice: Callable[[str], None] | None = None) -> UnCLIP:
    """Load an unCLIP model from what `sources.locate` produced, fetching its folder on first use.

    `device` is auto|cpu|cuda|mps and `dtype` auto|fp32|fp16|bf16 (auto: fp16 on accelerators, fp32 on the CPU).
    With `low_vram`, components wait on the CPU and only the stage running sits on the accelerator.
    """
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    home = torch.device("cpu") if low_vram else target
    folder = source.folder("model", on_notice)
    parts = load_components(folder, precision, home)
    assert isinstance(source.defaults, UnCLIPSettings)
    return UnCLIP(parts, None, source.defaults, target, precision, low_vram, source, on_notice)
