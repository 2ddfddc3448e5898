"""Text to image and image variations with an unCLIP model (Ramesh et al. 2022, arXiv 2204.06125, §2).

Text to image: CLIP text encoder -> diffusion prior (text embedding to CLIP image embedding) -> text projection ->
decoder at 64 px -> two super-resolution UNets to 256 px (`super_res_first` every step but the last,
`super_res_last` the last). Variations skip the prior: the CLIP image embedding of the input picture is decoded with
an empty prompt, as Karlo's image-variation sampler does.

The seed contract: every image has its own seed, and its noise comes from a CPU `torch.Generator` seeded with it,
drawn in the reference's order (prior start, prior steps; decoder start, decoder steps; super-res start, super-res
steps). An image therefore depends only on the checkpoint, its prompt or input, its seed and the settings, never on
the batch it was made in, and it equals diffusers' `UnCLIPPipeline` given
`generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]`.
"""

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..devices import resolve_device, resolve_dtype
from ..diffusion import sampler, schedule
from ..errors import OutOfMemoryError, UsageError
from ..images import preprocess, to_pil
from .api import ModelInfo, Progress, ProgressCallback, Settings
from .components import Components, load_components


def _noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], dtype: torch.dtype,
           device: torch.device, count: int = 1) -> torch.Tensor:
    """`count` successive draws from each image's own CPU generator: [count, B, *shape].

    Each draw is its own `torch.randn((1, *shape))` call, as diffusers' `randn_tensor` makes it, because one larger
    draw does not give the same numbers. All draws move to `device` in one copy, so a stage's step loop never waits
    on a host-to-device transfer.
    """
    draws = [torch.stack([torch.randn((1, *shape), generator=g, dtype=dtype) for _ in range(count)]) for g in generators]
    return torch.cat(draws, dim=1).to(device)


def _sample(denoise: sampler.Denoiser, x: torch.Tensor, steps: list[int], config: schedule.SchedulerConfig,
            generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Run one stage's sampler from x_T, drawing its step noises (after x_T) from the images' generators."""
    noisy = sum(sampler.needs_noise(t) for t in steps)
    noises = _noise(generators, tuple(x.shape[1:]), x.dtype, x.device, noisy)  # [noisy, B, ...]
    return sampler.sample(denoise, x, steps, schedule.noise_schedule(config), config, lambda i: noises[i])


class UnCLIP:
    """A loaded unCLIP model. Build it with `load()`; call `generate()` or `vary()` for batches of images."""

    def __init__(self, parts: Components, info: ModelInfo, defaults: Settings, device: torch.device,
                 dtype: torch.dtype, low_vram: bool = False) -> None:
        self.parts = parts
        self.info = info
        self.defaults = defaults
        self.device = device
        self.dtype = dtype
        self.low_vram = low_vram
        self._held: list[torch.nn.Module] = []  # what `_hold` put on the accelerator

    @property
    def max_tokens(self) -> int:
        """The longest prompt in tokens, start and end tokens included (77 for CLIP)."""
        return self.parts.tokenizer.model_max_length

    def prompt_overflow(self, prompt: str) -> str:
        """The part of `prompt` that truncation to `max_tokens` cuts off, or "" when the prompt fits."""
        return self.parts.tokenizer.encode([prompt]).overflow[0]

    def _hold(self, *modules: torch.nn.Module) -> None:
        """In low-VRAM mode, make `modules` the only networks on the accelerator: the ones held before go back to
        the CPU first, so one stage's weights at most are ever there (text encoder and prior, then the decoder, then
        one super-resolution network at a time). Without low-VRAM mode every network stays where it was loaded."""
        if not self.low_vram or [id(m) for m in modules] == [id(m) for m in self._held]:
            return
        for module in self._held:
            if all(module is not kept for kept in modules):
                module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for module in modules:
            module.to(self.device)
        self._held = list(modules)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                 progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One image for each (prompt, seed) pair, made in one batch. See the module docstring for the seed contract."""
        return to_pil(self.generate_tensors(prompts, seeds, settings, progress=progress))

    def generate_tensors(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                         progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `generate`, but returns the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        if self.parts.prior is None:
            raise UsageError(f"{self.info.name} has no prior, so it makes variations only (use `dalle vary`)")
        return self._run(self._generate, list(prompts), list(seeds), settings or self.defaults, progress)

    def vary(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None, *,
             progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One variation for each (image, seed) pair: decode the image's CLIP embedding with new noise."""
        return to_pil(self.vary_tensors(images, seeds, settings, progress=progress))

    def vary_tensors(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None, *,
                     progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `vary`, but returns the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        if self.parts.image_encoder is None or self.parts.preprocess is None:
            raise UsageError(f"{self.info.name} has no image encoder, so it cannot make variations")
        return self._run(self._vary, list(images), list(seeds), settings or self.defaults, progress)

    def _run(self, fn: Callable, inputs: list, seeds: list[int], settings: Settings,
             progress: ProgressCallback | None) -> torch.Tensor:
        if len(inputs) != len(seeds):
            raise UsageError(f"{len(inputs)} inputs but {len(seeds)} seeds: give one seed per image")
        if not inputs:
            raise UsageError("nothing to make: no prompts or images were given")
        # Refuse bad step counts before any network runs, not halfway through a batch.
        schedule.timesteps(settings.decoder_steps, self.parts.decoder_scheduler)
        schedule.timesteps(settings.sr_steps, self.parts.super_res_scheduler)
        report = progress or (lambda event: None)
        try:
            with torch.inference_mode():
                return fn(inputs, seeds, settings, report)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"{self.device.type} ran out of memory: try --low-vram or a smaller --batch-size"
            ) from None
        finally:
            self._hold()

    def _generate(self, prompts: list[str], seeds: list[int], s: Settings, report: ProgressCallback) -> torch.Tensor:
        parts = self.parts
        prior_steps = schedule.timesteps(s.prior_steps, parts.prior_scheduler)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        guided = s.prior_guidance > 1.0 or s.decoder_guidance > 1.0  # as the reference: both stages, or neither
        self._hold(parts.text_encoder, parts.prior)
        embeds, hidden, mask = self._encode_text(prompts, guided)
        image_embeds = self._prior(embeds, hidden, mask, generators, prior_steps, s, guided, report)
        return self._decode_and_upscale(image_embeds, embeds, hidden, mask, generators, s, guided, report)

    def _vary(self, images: list[Image.Image], seeds: list[int], s: Settings, report: ProgressCallback) -> torch.Tensor:
        parts = self.parts
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        guided = s.decoder_guidance > 1.0
        report(Progress("encode", 1, 1, 0, len(images), len(images)))
        self._hold(parts.text_encoder, parts.image_encoder)
        embeds, hidden, mask = self._encode_text([""] * len(images), guided)
        pixels = preprocess(images, parts.preprocess).to(self.device, self.dtype)  # [B, 3, S, S]
        # One image at a time: a batched ViT differs in the last bits with the batch size, and a variation must
        # depend only on its own image and seed. The encoder runs once per image, so this costs little.
        image_embeds = torch.cat([parts.image_encoder(p[None]) for p in pixels])  # [B, D]
        return self._decode_and_upscale(image_embeds, embeds, hidden, mask, generators, s, guided, report)

    def _encode_text(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CLIP text embeddings [B', D], hidden states [B', L, D] and the token mask [B', L] for the prompts.
        With guidance, B' = 2B: the empty prompt's rows come first, then the prompts' (the reference's order)."""
        tokenizer, encoder = self.parts.tokenizer, self.parts.text_encoder
        batch = [*prompts, ""] if guided else prompts  # the empty prompt is encoded once and shared
        tokens = tokenizer.encode(batch)
        ids = torch.tensor(tokens.input_ids, device=self.device)
        mask = torch.tensor(tokens.attention_mask, device=self.device).bool()
        embeds, hidden = encoder(ids)  # [B(+1), D], [B(+1), L, D]
        if not guided:
            return embeds, hidden, mask
        n = len(prompts)

        def with_uncond(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[n:].expand(n, *x.shape[1:]), x[:n]])

        return with_uncond(embeds), with_uncond(hidden), with_uncond(mask)

    def _prior(self, embeds: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
               generators: list[torch.Generator], steps: list[int], s: Settings, guided: bool,
               report: ProgressCallback) -> torch.Tensor:
        """Sample CLIP image embeddings [B, D] from the prior (paper §2.2), guided as the reference does."""
        prior, config = self.parts.prior, self.parts.prior_scheduler
        n = len(generators)
        x = _noise(generators, (prior.config.embedding_dim,), embeds.dtype, self.device)[0]

        def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            inputs = torch.cat([x, x]) if guided else x
            out = prior(inputs, t, proj_embedding=embeds, encoder_hidden_states=hidden, attention_mask=mask)
            report(Progress("prior", i + 1, len(steps), 0, n, n))
            return sampler.guide(out, s.prior_guidance) if guided else out

        x = _sample(denoise, x, steps, config, generators)
        return prior.post_process_latents(x)

    def _decode_and_upscale(self, image_embeds: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor,
                            mask: torch.Tensor, generators: list[torch.Generator], s: Settings, guided: bool,
                            report: ProgressCallback) -> torch.Tensor:
        """Decoder (64 px) then super-resolution; returns images [B, 3, H, W] in [-1, 1]."""
        parts = self.parts
        decoder_steps = schedule.timesteps(s.decoder_steps, parts.decoder_scheduler)
        sr_steps = schedule.timesteps(s.sr_steps, parts.super_res_scheduler)
        n = len(generators)
        learned_variance = parts.decoder_scheduler.variance_type == "learned_range"

        def draw(shape: tuple[int, ...]) -> torch.Tensor:
            return _noise(generators, shape, self.dtype, self.device)[0]

        self._hold(parts.text_proj, parts.decoder)
        context, time_embeds = parts.text_proj(image_embeds, embeds, hidden, guided)
        context_mask = F.pad(mask, (parts.text_proj.config.clip_extra_context_tokens, 0), value=True)
        size = parts.decoder.config.sample_size

        def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            inputs = torch.cat([x, x]) if guided else x
            out = parts.decoder(inputs, t, encoder_hidden_states=context, class_labels=time_embeds,
                                attention_mask=context_mask)
            report(Progress("decoder", i + 1, len(decoder_steps), 0, n, n))
            return sampler.guide(out, s.decoder_guidance, learned_variance) if guided else out

        x = draw((parts.decoder.config.in_channels, size, size))
        small = _sample(denoise, x, decoder_steps, parts.decoder_scheduler, generators).clamp(-1, 1)

        self._hold(parts.super_res_first)
        size = parts.super_res_first.config.sample_size
        x = draw((parts.super_res_first.config.in_channels // 2, size, size))
        # Resampled in fp32: the CPU has no half-precision antialiased bicubic kernel, and it is more exact anyway.
        upscaled = F.interpolate(small.float(), size=(size, size), mode="bicubic", align_corners=False,
                                 antialias=self.device.type != "mps").to(small.dtype)  # [B, 3, size, size]

        def denoise_sr(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            unet = parts.super_res_last if i == len(sr_steps) - 1 else parts.super_res_first
            self._hold(unet)  # swaps in super_res_last for the last step in low-VRAM mode
            out = unet(torch.cat([x, upscaled], dim=1), t)
            report(Progress("super_res", i + 1, len(sr_steps), 0, n, n))
            return out

        return _sample(denoise_sr, x, sr_steps, parts.super_res_scheduler, generators)


def load(model: str | Path = "karlo", *, device: str = "auto", dtype: str = "auto", low_vram: bool = False,
         offline: bool = False, on_notice: Callable[[str], None] | None = None) -> UnCLIP:
    """Load a model by registry alias, hub id `owner/name[@revision]` or local folder, downloading it on first use.

    `device` is auto|cpu|cuda|mps and `dtype` auto|fp32|fp16|bf16 (auto: fp16 on accelerators, fp32 on the CPU).
    With `low_vram`, components wait on the CPU and only the stage running sits on the accelerator.
    """
    from ..hub import resolve

    resolved = resolve(str(model), offline=offline, on_notice=on_notice)
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    home = torch.device("cpu") if low_vram else target
    parts = load_components(resolved.folder, precision, home, resolved.image_encoder)
    return UnCLIP(parts, resolved.info, resolved.defaults, target, precision, low_vram)
