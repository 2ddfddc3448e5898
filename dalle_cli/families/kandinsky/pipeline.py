"""Text to image and image variations with Kandinsky 2.2, equal to diffusers' `KandinskyV22CombinedPipeline` and
`KandinskyV22Pipeline`.

The stages are public, and the operations compose them:
- `encode_text`: bigG text embeddings, hidden states and mask, with the unconditional rows (the negative prompt, or "");
- `encode_image`: the bigG image embedding z_i of a picture;
- `zero_embed`: the embedding of an all-zero (mean-colour, after normalisation) picture, the negative image embedding
  when there is no negative prompt; it depends only on the checkpoint, so it is computed once and cached on disk;
- `prior`: prompts -> image embeddings and negative image embeddings (paper §2.2, with x_0 prediction);
- `decode_latents`: image embeddings (and negatives, for guidance) -> MoVQ latents, by DDPM, from a given x_T or a
  drawn one; `to_pixels`: MoVQ's decoder; `decode` is the two together.
`generate` runs prior then decode; `vary` decodes a picture's embedding against the zero embedding. For the paper's
manipulations (§3, composed in `engine.model`) `invert` inverts MoVQ's encoding of a picture through the decoder UNet
by DDIM, and `render` decodes embeddings from such a noise by DDIM at η. `edit_tensors` runs the prior, then repaints
a masked region with the inpainting decoder or makes image to image with the plain one (`edits`), equal to
`KandinskyV22InpaintCombinedPipeline` and `KandinskyV22Img2ImgCombinedPipeline`; an inpainting decoder does nothing
else.

The seed contract is Karlo's: every image draws from its own generator, in the reference's order (prior start and
steps, decoder start and steps). With a negative prompt the reference runs the prior on prompts and negative
prompts as one batch; each image then draws its prompt's and its negative prompt's rows together, as one (2, D)
tensor, which is what diffusers draws for one image, and which keeps an image independent of its batch.
"""

import functools
from typing import Callable, Sequence

import torch
from PIL import Image

from ...api import Progress, ProgressCallback
from ...devices import resolve_device, resolve_dtype
from ...diffusion import ddim, ddpm, sampler, schedule
from ...diffusion.sampler import Denoiser
from ...diffusion.guidance import guided
from ...engine.cache import cached_tensor
from ...engine.latent import Latent, best_index
from ...engine.noise import ImageNoise, deterministic, invert_stage, reporting, run_stage
from ...engine.model import Model
from ...engine.text import TextConditioning, encode_text
from ...errors import UsageError
from ...images import fit, preprocess
from ...registry import load_registry
from ...sources import ModelSource
from . import FAMILY, edits
from .components import load_components, load_image_encoder
from .settings import KandinskySettings


def _silent(event: Progress) -> None:
    """The progress callback when the caller gives none."""


class Kandinsky(Model):
    """A loaded Kandinsky 2.2 model. Build it with `load_model` (or `dalle_cli.load`); call `generate` or `vary`, or
    the stages. Its `source` holds the prior folder, whose image encoder is loaded when first needed."""

    family = FAMILY

    def prepare(self, operation: str) -> None:
        """Make sure `operation` (one of the family's operations) can run: all but "generate" and "edit" load the
        image encoder now. Raises `UsageError` for an operation the model cannot do: an inpainting decoder edits
        only."""
        if operation not in FAMILY.operations:
            raise UsageError(f"{self.info.name} cannot {operation} (it can {', '.join(FAMILY.operations)})")
        self._refuse(operation)
        if operation not in ("generate", "edit"):
            self._image_encoder()

    def _refuse(self, operation: str) -> None:
        """Refuse any operation but "edit" on an inpainting decoder, whose UNet needs a picture and a mask."""
        if operation != "edit" and edits.inpaints(self):
            raise UsageError(f"{self.info.name} is an inpainting decoder and cannot {operation}: it only repaints "
                             "masked regions of pictures (edit); kandinsky-2.2 does the rest")

    def _image_encoder(self) -> torch.nn.Module:
        with self._loading:
            if self.parts.image_encoder is None:
                home = torch.device("cpu") if self.low_vram else self.device
                role = "image_encoder" if self._source.has("image_encoder") else "prior"  # a local prior holds it
                folder = self._source.folder(role, self._on_notice)
                self.parts.image_encoder = load_image_encoder(folder, self.dtype, home, self.low_memory)
            return self.parts.image_encoder

    # The operations.

    def generate_tensors(self, prompts: Sequence[str], seeds: Sequence[int],
                         settings: KandinskySettings | None = None, *,
                         progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `generate`, but returns the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        s = self._check(list(prompts), list(seeds), settings)
        with self._running():
            noise = ImageNoise(seeds)
            embeds, negative = self.prior(list(prompts), noise, s, progress=progress)
            return self.decode(embeds, negative, noise, s, progress=progress)

    def noise_variation(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: KandinskySettings, *,
                        progress: ProgressCallback | None = None) -> torch.Tensor:
        """Each picture's embedding decoded from fresh noise against the zero embedding, [B, 3, H, W] in [-1, 1]."""
        s = self._check(list(images), list(seeds), settings, "vary")
        report, n = progress or _silent, len(images)
        with self._running():
            report(Progress("encode", 1, 1, 0, n, n))
            embeds = self.encode_image(list(images))
            negative = self.zero_embed().expand(n, -1)
            return self.decode(embeds, negative, ImageNoise(seeds), s, progress=progress)

    img2img_strength: float = 0.3  # an edit's strength without a mask or a strength given: diffusers' Img2Img default

    def edit_size(self, settings: KandinskySettings | None = None) -> tuple[int, int]:
        """(width, height) an edit runs at: the settings' image size."""
        s = settings or self.defaults
        return s.width, s.height

    def edit_tensors(self, pixels: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
                     seeds: Sequence[int], settings: KandinskySettings | None = None, *,
                     progress: ProgressCallback | None = None) -> torch.Tensor:
        """Pictures [B, 3, H, W] in [-1, 1] at `edit_size`, towards the prompts: repainted where `masks`
        [B, 1, H, W] are 1 (1 = repaint, 0 = keep) by the inpainting decoder, or without masks noised to
        `settings.strength` and denoised by the plain decoder (see `edits`). The prior runs on the prompts as
        `generate` runs it, from the same generators. Returns [B, 3, H, W] in [-1, 1] on the model's device. Raises
        `UsageError` for a mask without the inpainting decoder, no mask with it, a mask with a strength, no mask and
        no strength, and pictures or masks not at `edit_size`."""
        s = self._check(list(prompts), list(seeds), settings, "edit")
        edits.check_edit(self, pixels, masks, s, len(seeds))
        report, n = progress or _silent, len(seeds)
        with self._running():
            noise = ImageNoise(seeds)
            embeds, negative = self.prior(list(prompts), noise, s, progress=progress)
            report(Progress("edit", 1, 1, 0, n, n))
            pixels = pixels.to(self.device, self.dtype)
            if masks is None:
                return edits.image_to_image(self, embeds, negative, pixels, noise, s, report)
            return edits.inpaint(self, embeds, negative, pixels, masks.to(self.device), noise, s, report)

    def edit_events(self, settings: KandinskySettings, masked: bool) -> int:
        """The progress events of one `edit` batch: the prior's, the picture's and the decoder steps run."""
        s = settings
        steps = schedule.strength_steps(list(range(s.decoder_steps)), None if masked else s.strength)
        return s.prior_steps * s.prior_candidates + 1 + len(steps)

    def prompt_embeddings(self, prompts: list[str], seeds: list[int], settings: KandinskySettings, *,
                          progress: ProgressCallback | None = None) -> torch.Tensor:
        """The prior's image embeddings [B, D] of prompts, each drawn from its seed as `generate` draws it."""
        s = self._check(list(prompts), list(seeds), settings, "interpolate")
        return self.prior(list(prompts), ImageNoise(seeds), s, progress=progress)[0]

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """The bigG text embeddings z_t [B, D] of prompts."""
        return self.encode_text(prompts, None).embeds

    def invert(self, images: Sequence[Image.Image], settings: KandinskySettings | None = None, *,
               progress: ProgressCallback | None = None) -> Latent:
        """The bipartite latent of each picture (paper §3): its bigG image embedding z_i and the decoder's x_T, the
        DDIM inversion (η = 0) of MoVQ's encoding of the picture, conditioned on z_i and guided against the zero
        embedding as variations are, at the settings' `for_inversion` guidance. The picture is centre-cropped to the
        settings' aspect ratio and resized to width x height. Noises: (x_T [B, 4, height / 8, width / 8],)."""
        s = self._check(list(images), [0] * len(images), settings, "vary").for_inversion()
        self.prepare("vary")
        report, n = progress or _silent, len(images)
        unet, config = self.parts.unet, self.parts.scheduler
        with self._running():
            report(Progress("encode", 1, 1, 0, n, n))
            embeds = self.encode_image(list(images))
            pixels = fit(list(images), s.width, s.height).to(self.device, self.dtype)  # [B, 3, H, W]
            self.residency.hold(self.parts.movq)
            latents = torch.cat([self.parts.movq.encode(p[None]) for p in pixels])  # one at a time, as to_pixels
            steps = ddim.invertible(ddpm.timesteps(s.decoder_steps, config), ddpm.noise_schedule(config))
            self.residency.hold(unet)
            denoise = self._decoder_model(embeds, self.zero_embed().expand(n, -1), s)

            def step_done(i: int, t: int, x: torch.Tensor) -> None:
                report(Progress("invert", len(steps) - i, len(steps), 0, n, n))

            x_T = invert_stage(denoise, latents, steps, ddpm.noise_schedule(config), ddim.config_for(config),
                               step_done)
        return Latent(embeds, (x_T,))

    def render(self, embeds: torch.Tensor, noises: tuple[torch.Tensor, ...] | None, seeds: Sequence[int],
               settings: KandinskySettings | None = None, *, eta: float = 0.0,
               captions: Sequence[str] | None = None, progress: ProgressCallback | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] decoded from image embeddings [B, D] by DDIM at η against the zero embedding, from
        `noises` (x_T,) or, when None, from an x_T drawn from each image's generator; at η > 0 the step noises
        come from the same generators after it. `noises` are an inversion's, decoded at the guidance it inverted at
        (`Settings.for_inversion`). Kandinsky's decoder reads no text: `captions` change nothing."""
        s = self._check(list(embeds), list(seeds), settings, "vary")
        s = s.for_inversion() if noises is not None else s
        self._captions(captions, seeds)  # checked as every family checks them, then unread
        noise = ImageNoise(seeds)
        with self._running():
            negative = self.zero_embed().expand(len(seeds), -1)
            x_T = noises[0] if noises is not None else None
            return self.decode(embeds.to(self.device, self.dtype), negative, noise, s, x_T, eta=eta,
                               progress=progress)

    def _check(self, inputs: list, seeds: list[int], settings: KandinskySettings | None,
               operation: str = "generate") -> KandinskySettings:
        """The settings to use for `operation`, after refusing a call that cannot run before any network does."""
        self._pair(inputs, seeds)
        self._refuse(operation)
        s = settings or self.defaults
        schedule.timesteps(s.prior_steps, self.parts.prior_scheduler)
        ddpm.timesteps(s.decoder_steps, self.parts.scheduler)
        return s

    # The stages.

    def encode_text(self, prompts: list[str], unconditional: str | None) -> TextConditioning:
        """The bigG text conditioning of `prompts`; with an `unconditional` prompt, its rows come first."""
        parts = self.parts
        with self._running():
            self.residency.hold(parts.text_encoder, parts.prior)
            return encode_text(parts.tokenizer, parts.text_encoder, prompts, unconditional, self.device)

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """The bigG image embeddings z_i [B, D] of `images` (any size; CLIP's preprocessing crops them), one image at
        a time so that an embedding never depends on its batch."""
        encoder = self._image_encoder()
        with self._running():
            self.residency.hold(encoder)
            pixels = preprocess(images, self.parts.preprocess).to(self.device, self.dtype)  # [B, 3, S, S]
            return torch.cat([encoder(p[None]) for p in pixels])  # [B, D]

    def zero_embed(self) -> torch.Tensor:
        """The image embedding [1, D] of an all-zero encoder input, as diffusers' `get_zero_embed` computes it: the
        negative image embedding when there is no negative prompt. Cached on disk by the prior's revision and the
        dtype, so the image encoder is loaded only the first time."""
        part = self._source.parts["prior"]
        where = f"{part.source.repo_id}@{part.source.revision}" if part.source is not None else self._local_key()
        size = self.parts.preprocess.crop_size

        def compute() -> torch.Tensor:
            encoder = self._image_encoder()
            with self._running():
                self.residency.hold(encoder)
                zeros = torch.zeros(1, 3, size["height"], size["width"], device=self.device, dtype=self.dtype)
                return encoder(zeros)

        key = f"kandinsky zero embed {where} {self.dtype} {self.device.type}"
        return cached_tensor("zero-embeds", key, compute).to(self.device, self.dtype)

    def _local_key(self) -> str:
        """A local prior folder's identity: its path and its image encoder weights' size and time."""
        folder = self._source.folder("prior") / "image_encoder"
        stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors"))
        return f"{folder.resolve()} {stats}"

    def prior(self, prompts: list[str], noise: ImageNoise, settings: KandinskySettings, *,
              progress: ProgressCallback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings [B, D] of `prompts` from the prior, and the negative image embeddings [B, D] the decoder
        guides away from: the prior's embedding of the negative prompt, or the zero embedding without one. With
        `settings.prior_candidates` K > 1 each image samples K times, one candidate after the other from its
        generator, and keeps the one closest to its prompt (`engine.latent.best_index`; paper §2.2)."""
        prior, config = self.parts.prior, self.parts.prior_scheduler
        report, n = progress or _silent, len(prompts)
        negative = settings.negative_prompt or None
        rows = 2 if negative is not None else 1  # each image's rows: its prompt's (and its negative prompt's)
        guided_ = settings.prior_guidance > 1.0
        conditional = [*prompts, *[negative] * n] if negative is not None else prompts
        unconditional = (negative if negative is not None else "") if guided_ else None
        text = self.encode_text(conditional, unconditional)
        steps = schedule.timesteps(settings.prior_steps, config)
        dim = prior.config.embedding_dim

        def arranged(draw: torch.Tensor) -> torch.Tensor:
            """Per-image draws [B, rows, D] as the batch's rows [rows * B, D]: every prompt row, then every negative."""
            return draw.transpose(0, 1).reshape(rows * n, dim)

        with self._running():
            self.residency.hold(self.parts.text_encoder, prior)

            def model(x: torch.Tensor, t: int) -> torch.Tensor:
                return prior(x, t, proj_embedding=text.embeds, encoder_hidden_states=text.hidden,
                             attention_mask=text.mask)

            run = guided(model, settings.prior_guidance) if guided_ else model
            count, calls = settings.prior_candidates, [0]

            def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
                out = run(x, t)
                calls[0] += 1
                report(Progress("prior", calls[0], count * len(steps), 0, n, n))
                return out

            candidates = []
            tables = schedule.noise_schedule(config)
            for _ in range(count):  # each candidate's start and step noises, then the next one's
                x = arranged(noise.start((rows, dim), text.embeds.dtype, self.device))
                if settings.sampler in (None, "ddpm"):
                    noisy = sum(sampler.needs_noise(t) for t in steps)
                    noises = noise.draw((rows, dim), x.dtype, self.device, noisy)  # [noisy, B, rows, D]
                    x = sampler.sample(denoise, x, steps, tables, config,
                                       lambda i: arranged(noises[i]))  # per-image (rows, D) draws: not `run_stage`'s
                else:
                    x = deterministic(denoise, x, steps, tables, ddim.config_for(config), settings.sampler)
                candidates.append(prior.post_process_latents(x))  # [rows * B, D]
            embeds = candidates[0]
            if count > 1:  # the candidate closest to the prompt, with its own negative embedding
                pick = best_index([c[:n] for c in candidates], text.prompt_embeds[:n])
                embeds = torch.stack(candidates)[pick.repeat(rows), torch.arange(rows * n, device=pick.device)]
        if negative is not None:
            return embeds[:n], embeds[n:]
        return embeds, self.zero_embed().expand(n, -1)

    def decode_latents(self, image_embeds: torch.Tensor, negative_embeds: torch.Tensor, noise: ImageNoise,
                       settings: KandinskySettings, x_T: torch.Tensor | None = None, *, eta: float | None = None,
                       progress: ProgressCallback | None = None) -> torch.Tensor:
        """MoVQ latents [B, 4, H/8, W/8] from image embeddings [B, D] by the decoder UNet, guided away from
        `negative_embeds` [B, D] at `settings.decoder_guidance` (off at 1). Starts from `x_T` when given, else draws
        it from `noise` (right after the prior's noise, as the reference does). With `eta` the sampler is DDIM at
        η (the decoding of an inverted latent, paper §3), else the reference's DDPM."""
        unet, config = self.parts.unet, self.parts.scheduler
        steps = ddpm.timesteps(settings.decoder_steps, config)
        with self._running():
            self.residency.hold(unet)
            denoise = reporting(self._decoder_model(image_embeds, negative_embeds, settings), "decoder", len(steps),
                                len(noise), progress)
            scale = self.parts.movq.downscale
            shape = (unet.config.in_channels, settings.height // scale, settings.width // scale)
            x = x_T if x_T is not None else noise.start(shape, self.dtype, self.device)
            tables = ddpm.noise_schedule(config)
            loop = functools.partial(ddpm.sample, tables=tables, config=config)
            return run_stage(denoise, x, steps, noise, tables, ddim.config_for(config), loop, settings.sampler, eta)

    def _decoder_model(self, image_embeds: torch.Tensor, negative_embeds: torch.Tensor,
                       settings: KandinskySettings, extra: torch.Tensor | None = None) -> Denoiser:
        """The decoder UNet as a denoiser (x_t [B, C, h, w], t, i), conditioned on image embeddings [B, D] and guided
        away from `negative_embeds` [B, D] when `settings.decoder_guidance` > 1. `extra` [B, E, h, w] is concatenated
        to x_t before the UNet (the inpainting decoder's masked latents and keep mask, E = C + 1)."""
        unet, config = self.parts.unet, self.parts.scheduler
        guided_ = settings.decoder_guidance > 1.0
        embeds = torch.cat([negative_embeds, image_embeds]) if guided_ else image_embeds
        extras = None if extra is None else torch.cat([extra, extra]) if guided_ else extra  # as x_t's rows

        def model(x: torch.Tensor, t: int) -> torch.Tensor:
            return unet(x if extras is None else torch.cat([x, extras], dim=1), t, image_embeds=embeds)

        run = guided(model, settings.decoder_guidance, learned_variance=True) if guided_ else model

        def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            out = run(x, t)
            # A scheduler without learned variance reads only the ε half, as the reference drops the other.
            return out if ddpm.learns_variance(config) else out[:, :x.shape[1]]

        return denoise

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """MoVQ's decoder, without quantising (as the reference calls it): images [B, 3, H, W], about [-1, 1]. One
        image at a time: batched convolutions differ in the last bits with the batch size, and at 1024 px one
        image's activations are already large."""
        with self._running():
            self.residency.hold(self.parts.movq)
            return torch.cat([self.parts.movq.decode(x[None]) for x in latents])

    def decode(self, image_embeds: torch.Tensor, negative_embeds: torch.Tensor, noise: ImageNoise,
               settings: KandinskySettings, x_T: torch.Tensor | None = None, *, eta: float | None = None,
               progress: ProgressCallback | None = None) -> torch.Tensor:
        """`decode_latents`, then `to_pixels`: images [B, 3, H, W] in about [-1, 1]."""
        return self.to_pixels(self.decode_latents(image_embeds, negative_embeds, noise, settings, x_T, eta=eta,
                                                  progress=progress))


def _example_prior() -> str:
    """A registry model that holds a Kandinsky 2.2 prior, to name in a message."""
    found = [alias for alias, entry in load_registry().items()
             if entry.family == FAMILY.name and "prior" in entry.repos]
    return found[0] if found else "kandinsky-community/kandinsky-2-2-prior"


def load_model(source: ModelSource, *, device: str = "auto", dtype: str = "auto", low_vram: bool = False,
               low_memory: bool = False, on_notice: Callable[[str], None] | None = None) -> Kandinsky:
    """Load Kandinsky 2.2 from what `sources.locate` produced, fetching its two folders on first use.

    `device` is auto|cpu|cuda|mps and `dtype` auto|fp32|fp16|bf16 (auto: fp16 on accelerators, fp32 on the CPU).
    With `low_vram`, networks wait on the CPU and only the stage running sits on the accelerator; with `low_memory`,
    networks wait in their files and only the stage running holds its weights (`engine.offload`). Raises `UsageError`
    for a decoder without a prior (hint "part") and for a prior and decoder that do not fit together."""
    if not source.has("prior"):
        raise UsageError(f"{source.name} is a Kandinsky 2.2 decoder and needs a prior", hint="part", role="prior",
                         example=_example_prior())
    if not source.has("decoder"):
        raise UsageError(f"{source.name} is a Kandinsky 2.2 prior; run it with a Kandinsky 2.2 decoder, whose prior "
                         "it is")
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    home = torch.device("cpu") if low_vram else target
    decoder = source.folder("decoder", on_notice)
    prior = source.folder("prior", on_notice)
    parts = load_components(prior, decoder, precision, home, low_memory)
    assert isinstance(source.defaults, KandinskySettings)
    return Kandinsky(parts, None, source.defaults, target, precision, low_vram, source, on_notice, low_memory)
