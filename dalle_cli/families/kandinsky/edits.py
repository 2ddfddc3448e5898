"""Edits with Kandinsky 2.2's decoder, given the prior's embeddings: a masked region repainted by the inpainting
decoder, equal to diffusers' `KandinskyV22InpaintPipeline`, and image to image, equal to its
`KandinskyV22Img2ImgPipeline` (diffusers 0.42.1, fed the same tensors).

- Inpainting needs the inpainting decoder (kandinsky-community/kandinsky-2-2-decoder-inpaint), whose UNet reads
  2C + 1 = 9 channels: the noisy latents x_t, the picture's MoVQ latents with the repainted region zeroed, and the
  keep mask (1 = keep). The mask (1 = repaint, at the picture's size) is taken to the latent size by nearest
  neighbour, and its repainted region grown by one latent (`keep_mask`). The decoder runs its DDPM steps from a drawn
  x_T; after every step the kept region is replaced by the picture's latents noised to the next timestep with x_T
  itself as the noise, and by the clean latents after the last step. The reference does that with the *first*
  image's latents and mask for every image of a batch (its `image[:1]`); here each image keeps its own region, as
  the reference computes it for a batch of one.
- Image to image (SDEdit, Meng et al. 2022) runs the last int(strength x steps) of the decoder's DDPM steps from the
  picture's latents noised to the first of them, with one drawn noise.
Both MoVQ-encode one picture at a time (as `Kandinsky.to_pixels` decodes) and return MoVQ's decoding clamped to
[-1, 1], which is what the reference's "np" and "pil" outputs hold (mapped to [0, 1]).

Draw order, per image generator, after the prior's: inpainting draws x_T, then one noise per noisy step (as
`generate` does); image to image draws the picture's noise, then one per noisy step of the steps it runs.
"""

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...api import ProgressCallback
from ...diffusion import ddpm, sampler, schedule
from ...diffusion.sampler import Denoiser, NoiseFn
from ...diffusion.schedule import NoiseSchedule
from ...engine.noise import ImageNoise, reporting, sample_stage
from ...errors import UsageError
from .settings import KandinskySettings

if TYPE_CHECKING:
    from .pipeline import Kandinsky

# The growth of the repainted region: a latent is repainted when the latent at any of these offsets is. This is the
# cross plus the main diagonal, not the anti-diagonal, as diffusers' `prepare_mask` zeroes the keep mask around each
# repainted latent. conv2d correlates: out[i, j] = sum K[a, b] in[i + a - 1, j + b - 1].
GROWTH = ((1.0, 1.0, 0.0),
          (1.0, 1.0, 1.0),
          (0.0, 1.0, 1.0))


def inpaints(model: "Kandinsky") -> bool:
    """Whether the decoder is an inpainting one: a UNet reading the latents, the masked latents and the mask."""
    return model.parts.unet.config.in_channels == 2 * model.parts.movq.config.latent_channels + 1


def check_edit(model: "Kandinsky", pixels: torch.Tensor, masks: torch.Tensor | None, settings: KandinskySettings,
               images: int) -> None:
    """Refuse an edit this model cannot make, as `UsageError`: a mask without the inpainting decoder, no mask with
    it, a mask together with a strength, image to image without a strength, or pictures [images, 3, H, W] and masks
    [images, 1, H, W] not at the settings' size."""
    name = model.info.name
    if masks is not None and not inpaints(model):
        raise UsageError(f"{name} cannot repaint a masked region: use kandinsky-2.2-inpaint, its inpainting decoder")
    if masks is None and inpaints(model):
        raise UsageError(f"{name} is an inpainting decoder and repaints masked regions only: image to image needs "
                         "kandinsky-2.2")
    if masks is not None and settings.strength is not None:
        raise UsageError(f"{name} cannot use both a mask and a strength: its inpainting decoder repaints the masked "
                         "region from noise")
    if masks is None and settings.strength is None:
        raise UsageError("image to image needs a strength")
    size = (settings.height, settings.width)
    if tuple(pixels.shape) != (images, 3, *size):
        raise UsageError(f"an edit of {images} pictures at {size[1]}x{size[0]} needs pixels of shape "
                         f"{(images, 3, *size)}, got {tuple(pixels.shape)}")
    if masks is not None and tuple(masks.shape) != (images, 1, *size):
        raise UsageError(f"an edit of {images} pictures at {size[1]}x{size[0]} needs masks of shape "
                         f"{(images, 1, *size)}, got {tuple(masks.shape)}")


def keep_mask(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The inpainting decoder's keep mask [B, 1, h, w] at the latent size (h, w) of masks [B, 1, H, W] (1 or at
    least 0.5 = repaint): nearest-neighbour resized, the repainted region grown by `GROWTH` (zero padded), then
    inverted to 1 = keep. Float32, 0 or 1."""
    repaint = F.interpolate((masks >= 0.5).float(), size=size, mode="nearest")  # [B, 1, h, w]
    kernel = torch.tensor(GROWTH, device=masks.device)[None, None]  # [1, 1, 3, 3]
    return (F.conv2d(repaint, kernel, padding=1) == 0).float()


def encode(model: "Kandinsky", pixels: torch.Tensor) -> torch.Tensor:
    """MoVQ's latents [B, C, H/8, W/8] of pictures [B, 3, H, W] in [-1, 1], one picture at a time so that an image
    never depends on its batch."""
    model.residency.hold(model.parts.movq)
    return torch.cat([model.parts.movq.encode(p[None]) for p in pixels])


def inpaint_sample(denoise: Denoiser, x: torch.Tensor, steps: list[int], noise_fn: NoiseFn, *, known: torch.Tensor,
                   keep: torch.Tensor, tables: NoiseSchedule, config: ddpm.DDPMConfig) -> torch.Tensor:
    """`ddpm.sample` from x = x_T over `steps`, with the region where `keep` [B, 1, h, w] is 1 replaced after every
    step by `known` x_0 [B, C, h, w] noised to the step's new timestep with x_T as the noise (`ddpm.add_noise`), or
    by x_0 itself after the last step (the inpainting pipeline's re-imposition, RePaint's eq. 8 with a fixed ε)."""
    x_T = x
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        output = denoise(x, t, i)
        x = ddpm.step(output, t, prev_t, x, tables, config, noise_fn(i) if sampler.needs_noise(t) else None)
        level = ddpm.add_noise(known, x_T, prev_t, tables) if prev_t >= 0 else known
        x = keep * level + (1 - keep) * x
    return x


def inpaint(model: "Kandinsky", image_embeds: torch.Tensor, negative_embeds: torch.Tensor, pixels: torch.Tensor,
            masks: torch.Tensor, noise: ImageNoise, settings: KandinskySettings,
            progress: ProgressCallback) -> torch.Tensor:
    """Pictures [B, 3, H, W] in [-1, 1] repainted where masks [B, 1, H, W] are 1 by the inpainting decoder,
    conditioned on image embeddings [B, D] and guided away from `negative_embeds` [B, D]: images [B, 3, H, W] in
    [-1, 1]. Draws x_T and the step noises from `noise` (see the module docstring)."""
    config = model.parts.scheduler
    tables = ddpm.noise_schedule(config)
    steps = ddpm.timesteps(settings.decoder_steps, config)
    latents = encode(model, pixels)  # [B, C, h, w]
    keep = keep_mask(masks, tuple(latents.shape[-2:])).to(latents.dtype)  # [B, 1, h, w]
    x_T = noise.start(tuple(latents.shape[1:]), latents.dtype, latents.device)
    model.residency.hold(model.parts.unet)
    extra = torch.cat([latents * keep, keep], dim=1)  # [B, C + 1, h, w]: the masked latents, the keep mask
    denoise = reporting(model._decoder_model(image_embeds, negative_embeds, settings, extra), "decoder", len(steps),
                        len(noise), progress)
    loop = functools.partial(inpaint_sample, known=latents, keep=keep, tables=tables, config=config)
    return model.to_pixels(sample_stage(denoise, x_T, steps, noise, loop)).clamp(-1, 1)


def image_to_image(model: "Kandinsky", image_embeds: torch.Tensor, negative_embeds: torch.Tensor,
                   pixels: torch.Tensor, noise: ImageNoise, settings: KandinskySettings,
                   progress: ProgressCallback) -> torch.Tensor:
    """Pictures [B, 3, H, W] in [-1, 1] noised to `settings.strength` and denoised by the decoder, conditioned on
    image embeddings [B, D] and guided away from `negative_embeds` [B, D]: images [B, 3, H, W] in [-1, 1]. Draws
    the picture's noise and the step noises from `noise` (see the module docstring)."""
    config = model.parts.scheduler
    tables = ddpm.noise_schedule(config)
    assert settings.strength is not None  # check_edit refused image to image without one
    steps = schedule.strength_steps(ddpm.timesteps(settings.decoder_steps, config), settings.strength)
    latents = encode(model, pixels)  # [B, C, h, w]
    start = ddpm.add_noise(latents, noise.start(tuple(latents.shape[1:]), latents.dtype, latents.device), steps[0],
                           tables)
    model.residency.hold(model.parts.unet)
    denoise = reporting(model._decoder_model(image_embeds, negative_embeds, settings), "decoder", len(steps),
                        len(noise), progress)
    loop = functools.partial(ddpm.sample, tables=tables, config=config)
    return model.to_pixels(sample_stage(denoise, start, steps, noise, loop)).clamp(-1, 1)
