"""Load Kandinsky 2.2's two folders (the diffusers hub layouts of its prior and decoder repos) into our modules.

The prior folder (`KandinskyV22PriorPipeline`): tokenizer, text_encoder (OpenCLIP ViT-bigG/14's text tower in
`CLIPTextModelWithProjection` layout), prior, scheduler (`UnCLIPScheduler`), image_encoder (the bigG vision tower)
and image_processor. The decoder folder (`KandinskyV22Pipeline`, or `KandinskyV22InpaintPipeline` for the inpainting
decoder, whose UNet reads 2C + 1 = 9 channels: latents, masked latents, mask): unet, movq and scheduler
(`DDPMScheduler`). The image encoder (3.7 GB) is loaded only when an operation needs it: variations, and the
zero-image negative embedding the first time it is computed.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoint import load_component
from ...configs import from_config, read_json
from ...devices import conv_layout
from ...diffusion.ddpm import DDPMConfig
from ...diffusion.schedule import SchedulerConfig
from ...errors import CheckpointError, UsageError
from ...images import PreprocessConfig
from ...models.clip_text import CLIPTextConfig, CLIPTextEncoder
from ...models.clip_vision import CLIPVisionEncoder, load_vision_encoder
from ...models.movq import MoVQ, MoVQConfig
from ...models.prior import PriorConfig, PriorTransformer
from ...models.unet import UNet, UNetConfig
from ...tokenizer import Tokenizer

PRIOR_PARTS = ("tokenizer", "text_encoder", "prior", "scheduler", "image_processor")  # the image encoder: later
DECODER_PARTS = ("unet", "movq", "scheduler")


@dataclass
class Components:
    """The loaded networks of one Kandinsky 2.2 model, plus the sampling configs that drive them."""

    tokenizer: Tokenizer
    text_encoder: CLIPTextEncoder
    prior: PriorTransformer
    prior_scheduler: SchedulerConfig
    unet: UNet
    movq: MoVQ
    scheduler: DDPMConfig
    preprocess: PreprocessConfig
    image_encoder: CLIPVisionEncoder | None = None

    def modules(self) -> list[torch.nn.Module]:
        """Every network held, for moving them between devices."""
        found = [self.text_encoder, self.prior, self.unet, self.movq, self.image_encoder]
        return [m for m in found if m is not None]


def _check_layout(folder: Path, role: str, parts: tuple[str, ...]) -> None:
    index = read_json(folder / "model_index.json")
    missing = [name for name in parts if name not in index or not (folder / name).is_dir()]
    if missing:
        raise CheckpointError(f"{folder}: the Kandinsky 2.2 {role} has no component '{missing[0]}' (no folder "
                              f"{missing[0]}/ or no model_index.json entry)")


def load_components(prior: Path, decoder: Path, dtype: torch.dtype, device: torch.device,
                    lazy: bool = False) -> Components:
    """Load the prior folder and the decoder folder onto `device` in `dtype`, all but the image encoder; with
    `lazy`, each network's weights when it is first needed (`checkpoint.load_weights`).

    Raises `CheckpointError` for a missing component, weights that do not fit their config or a UNet that reads
    neither MoVQ's C latent channels nor the inpainting decoder's 2C + 1, and `UsageError` for a prior whose image
    embeddings are not the size the decoder reads."""
    _check_layout(prior, "prior", PRIOR_PARTS)
    _check_layout(decoder, "decoder", DECODER_PARTS)
    prior_config = from_config(PriorConfig, read_json(prior / "prior" / "config.json"))
    unet_config = from_config(UNetConfig, read_json(decoder / "unet" / "config.json"))
    latent = from_config(MoVQConfig, read_json(decoder / "movq" / "config.json")).latent_channels
    if unet_config.in_channels not in (latent, 2 * latent + 1):
        raise CheckpointError(f"{decoder}: the decoder UNet reads {unet_config.in_channels} channels, but a Kandinsky "
                              f"2.2 decoder reads MoVQ's {latent} latent channels, and an inpainting decoder "
                              f"{2 * latent + 1} (latents, masked latents, mask)")
    if unet_config.encoder_hid_dim != prior_config.embedding_dim:
        raise UsageError(f"the prior in {prior} makes {prior_config.embedding_dim}-d image embeddings, but the "
                         f"decoder in {decoder} reads {unet_config.encoder_hid_dim}-d ones: they are not a pair")
    return Components(
        tokenizer=Tokenizer.from_folder(prior / "tokenizer"),
        text_encoder=load_component(prior, "text_encoder", CLIPTextConfig, CLIPTextEncoder, dtype, device, lazy),
        prior=load_component(prior, "prior", PriorConfig, PriorTransformer, dtype, device, lazy),
        prior_scheduler=from_config(SchedulerConfig, read_json(prior / "scheduler" / "scheduler_config.json")),
        unet=load_component(decoder, "unet", UNetConfig, UNet, dtype, device, lazy, conv_layout(device)),
        movq=load_component(decoder, "movq", MoVQConfig, MoVQ, dtype, device, lazy),
        scheduler=from_config(DDPMConfig, read_json(decoder / "scheduler" / "scheduler_config.json")),
        preprocess=from_config(PreprocessConfig, read_json(prior / "image_processor" / "preprocessor_config.json")),
    )


def load_image_encoder(prior: Path, dtype: torch.dtype, device: torch.device, lazy: bool = False) -> CLIPVisionEncoder:
    """The bigG vision tower and projection of a prior folder (its `image_encoder/`)."""
    if not (prior / "image_encoder").is_dir():
        raise CheckpointError(f"{prior}: the Kandinsky 2.2 prior has no image_encoder/ folder")
    return load_vision_encoder(prior / "image_encoder", dtype, device, lazy)
