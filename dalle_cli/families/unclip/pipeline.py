"""Text to image and image variations with an unCLIP model (Ramesh et al. 2022, arXiv 2204.06125, §2).

The stages are public, and the operations compose them:
- `encode_text`: CLIP text embeddings, hidden states and token mask (with the empty prompt's rows under guidance);
- `encode_image`: the CLIP image embedding z_i of a picture;
- `prior`: text conditioning -> CLIP image embeddings (paper §2.2);
- `decode`: image embeddings (plus the text conditioning) -> 64 px images, from a given x_T or a drawn one;
- `upscale`: the two super-resolution UNets to 256 px (`super_res_first` every step but the last, `super_res_last`
  the last).
`generate` runs encode_text, prior, decode and upscale; `vary` runs encode_image, then decodes the embedding with an
empty prompt, as Karlo's image-variation sampler does. For the paper's manipulations (§3, composed in `engine.model`)
`invert` finds a picture's latent, the DDIM inversion of both the decoder and the super-resolution stage, and
`render` decodes embeddings from such noises by DDIM at η through both stages.

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
from ...devices import image_batch, resolve_device, resolve_dtype
from ...diffusion import ddim, schedule
from ...diffusion.sampler import Denoiser
from ...diffusion.guidance import guided
from ...engine.latent import Latent, best_of
from ...engine.noise import ImageNoise, invert_stage, reporting, run_stage, unclip_loop
from ...engine.model import Model
from ...engine.text import TextConditioning, encode_text
from ...errors import UsageError
from ...images import fit, preprocess
from ...sources import ModelSource
from . import FAMILY, edits
from .components import load_components, load_image_encoder
from .settings import UnCLIPSettings


def _silent(event: Progress) -> None:
    """The progress callback when the caller gives none."""


class UnCLIP(Model):
    """A loaded unCLIP model. Build it with `load_model` (or `dalle_cli.load`); call the operations `generate` and
    `vary`, or the stages, for batches of images."""

    family = FAMILY

    def prepare(self, operation: str) -> None:
        """Make sure `operation` (one of the family's operations) can run: fetch and load the parts it needs (the
        image encoder for variations, interpolations and text diffs, downloaded on first use). Raises `UsageError`
        when this model cannot do it."""
        if operation not in FAMILY.operations:
            raise UsageError(f"{self.info.name} cannot {operation} (it can {', '.join(FAMILY.operations)})")
        if operation in ("generate", "edit") and self.parts.prior is None:
            raise UsageError(f"{self.info.name} has no prior, so it makes variations only", hint="vary")
        if operation not in ("generate", "edit"):
            self._image_encoder(operation)

    def _image_encoder(self, operation: str = "vary") -> None:
        with self._loading:
            if self.parts.image_encoder is not None:
                return
            if self._source is None or not self._source.has("image_encoder"):
                doing = {"vary": "make variations", "interpolate": "interpolate pictures",
                         "text_diff": "make text diffs"}[operation]
                raise UsageError(f"{self.info.name} has no image encoder, so it cannot {doing}")
            folder = self._source.folder("image_encoder", self._on_notice)
            home = torch.device("cpu") if self.low_vram else self.device
            self.parts.image_encoder, self.parts.preprocess = load_image_encoder(folder, folder, self.dtype, home,
                                                                                 self.low_memory)

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

    def noise_variation(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: UnCLIPSettings, *,
                        progress: ProgressCallback | None = None) -> torch.Tensor:
        """Karlo's image variations: each picture's embedding decoded from fresh noise with an empty prompt,
        [B, 3, H, W] in [-1, 1] on the model's device."""
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

    img2img_strength = 0.75  # an edit's strength without a mask or a strength, chosen on shapes (benchmarks/)

    def edit_size(self, settings: UnCLIPSettings | None = None) -> tuple[int, int]:
        """(width, height) an edit runs at: the output size."""
        return self.output_size, self.output_size

    def edit_tensors(self, pixels: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
                     seeds: Sequence[int], settings: UnCLIPSettings | None = None, *,
                     progress: ProgressCallback | None = None) -> torch.Tensor:
        """Pictures [B, 3, S, S] in [-1, 1] at `edit_size` repainted where `masks` [B, 1, S, S] is 1 (RePaint), or
        without masks noised to `settings.strength` and denoised (SDEdit), towards the prompts; see `edits`. The
        pixels outside the masks are the model's, close to the picture's: `Model.edit` pastes the picture back."""
        s = self._check(list(prompts), list(seeds), settings, "edit")
        if masks is None and s.strength is None:
            raise UsageError("an edit needs a mask, a strength, or both")
        return edits.edit(self, pixels, masks, prompts, seeds, s, progress or _silent)

    def edit_events(self, settings: UnCLIPSettings, masked: bool) -> int:
        """The progress events of one `edit` batch: the prior's, the picture's, the decoder's calls along its walk
        and the super-resolution steps."""
        s = settings
        return (s.prior_steps * s.prior_candidates + 1 + edits.calls(s.decoder_steps, s.strength, s.resample, masked)
                + s.sr_steps)

    def prompt_embeddings(self, prompts: list[str], seeds: list[int], settings: UnCLIPSettings, *,
                          progress: ProgressCallback | None = None) -> torch.Tensor:
        """The prior's image embeddings [B, D] of prompts, each drawn from its seed as `generate` draws it."""
        s = self._check(list(prompts), list(seeds), settings, "generate")
        with self._running():
            text = self.encode_text(list(prompts), s.prior_guidance > 1.0 or s.decoder_guidance > 1.0)
            return self.prior(text, ImageNoise(seeds), s, progress=progress)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """The CLIP text embeddings z_t [B, D] of prompts."""
        return self.encode_text(prompts, False).embeds

    def _check(self, inputs: list, seeds: list[int], settings: UnCLIPSettings | None,
               operation: str) -> UnCLIPSettings:
        """The settings to use, after refusing a call that cannot run before any network does."""
        self._pair(inputs, seeds)
        self.prepare(operation)
        s = settings or self.defaults
        if operation in ("generate", "edit"):
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
        `text.guided` (at `settings.prior_guidance`, which may be 1). With `settings.prior_candidates` K > 1 each
        image samples K embeddings, one after the other from its generator, and keeps the closest to its prompt
        (`engine.latent.best_of`); K = 1 is the reference's single sample."""
        prior, config = self.parts.prior, self.parts.prior_scheduler
        if prior is None or config is None:
            raise UsageError(f"{self.info.name} has no prior, so it makes variations only", hint="vary")
        steps = schedule.timesteps(settings.prior_steps, config)
        count = settings.prior_candidates
        with self._running():
            self.residency.hold(self.parts.text_encoder, prior)

            def model(x: torch.Tensor, t: int) -> torch.Tensor:
                return prior(x, t, proj_embedding=text.embeds, encoder_hidden_states=text.hidden,
                             attention_mask=text.mask)

            run = guided(model, settings.prior_guidance) if text.guided else model
            denoise = reporting(lambda x, t, i: run(x, t), "prior", count * len(steps), len(noise), progress)
            candidates = []
            for _ in range(count):
                x = noise.start((prior.config.embedding_dim,), text.embeds.dtype, self.device)
                candidates.append(prior.post_process_latents(run_stage(
                    denoise, x, steps, noise, self._tables(config), ddim.config_for(config), unclip_loop(config),
                    settings.sampler)))
            return best_of(candidates, text.prompt_embeds)

    def decode(self, image_embeds: torch.Tensor, text: TextConditioning, noise: ImageNoise, settings: UnCLIPSettings,
               x_T: torch.Tensor | None = None, *, eta: float | None = None,
               progress: ProgressCallback | None = None) -> torch.Tensor:
        """The decoder's 64 px images [B, 3, 64, 64] in [-1, 1] from image embeddings [B, D] and the text
        conditioning, guided when `text.guided`. Starts from `x_T` [B, 3, 64, 64] when given, else draws it from
        `noise` (which the reference does right after the prior's noise). With `eta` the sampler is DDIM at η on
        `ddim_steps` (the paper's decoding of an inverted latent, §3), else the reference's ancestral sampler."""
        parts = self.parts
        config = parts.decoder_scheduler
        with self._running():
            self.residency.hold(parts.text_proj, parts.decoder)
            steps = schedule.timesteps(settings.decoder_steps, config)
            denoise = reporting(self._decoder_model(image_embeds, text, settings), "decoder", len(steps), len(noise),
                                 progress)
            size = parts.decoder.config.sample_size
            x = x_T if x_T is not None else noise.start((parts.decoder.config.in_channels, size, size), self.dtype,
                                                         self.device)
            return run_stage(denoise, x, steps, noise, self._tables(config), ddim.config_for(config),
                             unclip_loop(config), settings.sampler, eta).clamp(-1, 1)

    def _decoder_model(self, image_embeds: torch.Tensor, text: TextConditioning,
                       settings: UnCLIPSettings) -> Denoiser:
        """The decoder as a denoiser (x_t, t, i) -> output, conditioned on image embeddings [B, D] and the text,
        guided when `text.guided`."""
        parts = self.parts
        learned_variance = parts.decoder_scheduler.variance_type == "learned_range"
        context, time_embeds = parts.text_proj(image_embeds, text.embeds, text.hidden, text.guided)
        context_mask = F.pad(text.mask, (parts.text_proj.config.clip_extra_context_tokens, 0), value=True)

        def model(x: torch.Tensor, t: int) -> torch.Tensor:
            return parts.decoder(x, t, encoder_hidden_states=context, class_labels=time_embeds,
                                 attention_mask=context_mask)

        run = guided(model, settings.decoder_guidance, learned_variance) if text.guided else model
        return lambda x, t, i: run(x, t)

    def upscale(self, images: torch.Tensor, noise: ImageNoise, settings: UnCLIPSettings,
                x_T: torch.Tensor | None = None, *, eta: float | None = None,
                progress: ProgressCallback | None = None) -> torch.Tensor:
        """Super-resolution of the decoder's images [B, 3, 64, 64] in [-1, 1] to [B, 3, 256, 256] in [-1, 1], from
        `x_T` when given, else from a draw; with `eta`, by DDIM at η (as `decode`)."""
        parts = self.parts
        config = parts.super_res_scheduler
        with self._running():
            self.residency.hold(parts.super_res_first)
            steps = schedule.timesteps(settings.sr_steps, config)
            denoise = reporting(self._super_res_model(images, len(steps)), "super_res", len(steps), len(noise),
                                 progress)
            size = parts.super_res_first.config.sample_size
            x = x_T if x_T is not None else noise.start((parts.super_res_first.config.in_channels // 2, size, size),
                                                         self.dtype, self.device)
            return run_stage(denoise, x, steps, noise, self._tables(config), ddim.config_for(config),
                             unclip_loop(config), settings.sampler, eta)

    def _super_res_model(self, images: torch.Tensor, count: int) -> Denoiser:
        """The super-resolution UNets as a denoiser (x_t, t, i) of `count` steps, conditioned on the decoder's images
        [B, 3, 64, 64]: `super_res_first` every step but the last (i = count - 1), `super_res_last` the last, called
        on `devices.image_batch` images at a time."""
        parts = self.parts
        size = parts.super_res_first.config.sample_size
        # Resampled in fp32: the CPU has no half-precision antialiased bicubic kernel, and it is more exact anyway.
        upscaled = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                                 antialias=self.device.type != "mps").to(images.dtype)  # [B, 3, size, size]

        per_call = image_batch(self.device, len(images))

        def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            unet = parts.super_res_last if i == count - 1 else parts.super_res_first
            self.residency.hold(unet)  # swaps in super_res_last for the last step in low-VRAM mode
            inputs = torch.cat([x, upscaled], dim=1)  # [B, 6, size, size]
            outs = [unet(part, t) for part in inputs.split(per_call)]
            return outs[0] if len(outs) == 1 else torch.cat(outs)

        return denoise

    # The latent of a picture (paper §3): its embedding and its noises, DDIM-inverted through the stages.

    def invert(self, images: Sequence[Image.Image], settings: UnCLIPSettings | None = None, *,
               progress: ProgressCallback | None = None) -> Latent:
        """The bipartite latent of each picture: its CLIP image embedding z_i and the x_T of each stage, found by
        DDIM inversion (η = 0) conditioned on z_i and the empty prompt, as variations decode it, at the settings'
        `for_inversion` decoder guidance.

        The picture is centre-cropped to a square and resized to the model's output size (`output_size`) for the
        super-resolution stage; the decoder inverts its antialiased bicubic downsample to 64 px. The
        super-resolution x_T is the inversion of the full-size picture conditioned on that downsample, so that
        decoding the latent at η = 0 reconstructs the picture at full size, not only at 64 px.
        Noises: (decoder x_T [B, 3, 64, 64], super-resolution x_T [B, 3, 256, 256]).
        """
        s = (settings or self.defaults).for_inversion()
        self._pair(list(images), [0] * len(images))
        self.prepare("vary")
        parts, n = self.parts, len(images)
        with self._running():
            report = progress or _silent
            report(Progress("encode", 1, 1, 0, n, n))
            embeds = self.encode_image(list(images))
            full = fit(list(images), self.output_size, self.output_size).to(self.device, self.dtype)  # [B, 3, S, S]
            size = parts.decoder.config.sample_size
            small = F.interpolate(full.float(), size=(size, size), mode="bicubic", align_corners=False,
                                  antialias=self.device.type != "mps").clamp(-1, 1).to(self.dtype)
            text = self.encode_text([""] * n, s.decoder_guidance > 1.0)
            decoder_steps = self._inverted_steps(s.decoder_steps, parts.decoder_scheduler)
            sr_steps = self._inverted_steps(s.sr_steps, parts.super_res_scheduler)
            total, done = len(decoder_steps) + len(sr_steps), [0]

            def step_done(i: int, t: int, x: torch.Tensor) -> None:
                done[0] += 1
                report(Progress("invert", done[0], total, 0, n, n))

            self.residency.hold(parts.text_proj, parts.decoder)
            config = parts.decoder_scheduler
            x_decoder = invert_stage(self._decoder_model(embeds, text, s), small, decoder_steps, self._tables(config),
                                     ddim.config_for(config), step_done)
            self.residency.hold(parts.super_res_first)
            config = parts.super_res_scheduler
            x_sr = invert_stage(self._super_res_model(small, len(sr_steps)), full, sr_steps, self._tables(config),
                                ddim.config_for(config), step_done)
        return Latent(embeds, (x_decoder, x_sr))

    def render(self, embeds: torch.Tensor, noises: tuple[torch.Tensor, ...] | None, seeds: Sequence[int],
               settings: UnCLIPSettings | None = None, *, eta: float | None = 0.0,
               captions: Sequence[str] | None = None, progress: ProgressCallback | None = None) -> torch.Tensor:
        """Images [B, 3, 256, 256] in [-1, 1] decoded from image embeddings [B, D] by DDIM at η through both stages,
        from `noises` (a latent's, or a blend of latents') or, when None, from x_Ts drawn from each image's
        generator (the decoder's, then the super-resolution stage's). At η > 0 the step noises come from the
        same generators after that: the decoder's steps, then the super-resolution steps. With η None and no
        `noises` both stages run the reference's ancestral samplers, drawing as `generate` does after its prior.
        The decoder reads `captions` (one per image), or the empty prompt. `noises` are an inversion's, decoded at
        the guidance it inverted at (`Settings.for_inversion`)."""
        s = settings or self.defaults
        s = s.for_inversion() if noises is not None else s
        self._pair(list(embeds), list(seeds))
        captions = self._captions(captions, seeds)
        noise = ImageNoise(seeds)
        with self._running():
            text = self.encode_text(captions, s.decoder_guidance > 1.0)
            drawn = (None, None) if eta is None else self._draw_noises(noise)  # ancestral stages draw their own
            x_decoder, x_sr = noises if noises is not None else drawn
            small = self.decode(embeds.to(self.device, self.dtype), text, noise, s, x_decoder, eta=eta,
                                progress=progress)
            return self.upscale(small, noise, s, x_sr, eta=eta, progress=progress)

    def _draw_noises(self, noise: ImageNoise) -> tuple[torch.Tensor, torch.Tensor]:
        """One x_T per stage from each image's generator: the decoder's, then the super-resolution stage's."""
        decoder, sr = self.parts.decoder.config, self.parts.super_res_first.config
        return (noise.start((decoder.in_channels, decoder.sample_size, decoder.sample_size), self.dtype, self.device),
                noise.start((sr.in_channels // 2, sr.sample_size, sr.sample_size), self.dtype, self.device))

    @property
    def output_size(self) -> int:
        """The side of the images this model makes (256 for Karlo)."""
        return self.parts.super_res_first.config.sample_size

    def _inverted_steps(self, count: int, config: schedule.SchedulerConfig) -> list[int]:
        """The timesteps a stage's DDIM inversion walks: the reference's spacing with a singular top lowered
        (`ddim.invertible`), those `run_stage` samples down by DDIM."""
        return ddim.invertible(schedule.timesteps(count, config), self._tables(config))

    @staticmethod
    def _tables(config: schedule.SchedulerConfig) -> schedule.NoiseSchedule:
        return schedule.noise_schedule(config)



def load_model(source: ModelSource, *, device: str = "auto", dtype: str = "auto", low_vram: bool = False,
               low_memory: bool = False, on_notice: Callable[[str], None] | None = None) -> UnCLIP:
    """Load an unCLIP model from what `sources.locate` produced, fetching its folder on first use.

    `device` is auto|cpu|cuda|mps and `dtype` auto|fp32|fp16|bf16 (auto: fp16 on accelerators, fp32 on the CPU).
    With `low_vram`, components wait on the CPU and only the stage running sits on the accelerator; with
    `low_memory`, they wait in their files and only the stage running holds its weights (`engine.offload`).
    """
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    home = torch.device("cpu") if low_vram else target
    folder = source.folder("model", on_notice)
    parts = load_components(folder, precision, home, lazy=low_memory)
    assert isinstance(source.defaults, UnCLIPSettings)
    return UnCLIP(parts, None, source.defaults, target, precision, low_vram, source, on_notice, low_memory)
