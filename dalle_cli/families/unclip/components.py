"""Load every component of an unCLIP model folder (the diffusers hub layout) into our modules.

`model_index.json` names the components. Karlo's text-to-image repo has a prior; the image-variations repos have an
image encoder instead. The image encoder can also come from a separate folder (for example openai's CLIP ViT-L/14
repo, whose single `model.safetensors` holds both towers; see `dalle_cli.models.clip_vision`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoint import load_component
from ...configs import from_config, read_json
from ...diffusion.schedule import SchedulerConfig
from ...devices import conv_layout
from ...errors import CheckpointError
from ...images import PreprocessConfig
from ...models.clip_text import CLIPTextConfig, CLIPTextEncoder
from ...models.clip_vision import CLIPVisionEncoder, load_vision_encoder
from ...models.prior import PriorConfig, PriorTransformer
from ...models.text_proj import TextProjConfig, TextProjection
from ...models.unet import UNet, UNetConfig
from ...tokenizer import Tokenizer

REQUIRED = ("tokenizer", "text_encoder", "text_proj", "decoder", "super_res_first", "super_res_last",
            "decoder_scheduler", "super_res_scheduler")


@dataclass
class Components:
    """The loaded networks of one model, plus the sampling configs that drive them."""

    tokenizer: Tokenizer
    text_encoder: CLIPTextEncoder
    text_proj: TextProjection
    decoder: UNet
    super_res_first: UNet
    super_res_last: UNet
    decoder_scheduler: SchedulerConfig
    super_res_scheduler: SchedulerConfig
    prior: PriorTransformer | None = None
    prior_scheduler: SchedulerConfig | None = None
    image_encoder: CLIPVisionEncoder | None = None
    preprocess: PreprocessConfig | None = None

    def modules(self) -> list[torch.nn.Module]:
        """Every network held, for moving them between devices."""
        found = [self.text_encoder, self.text_proj, self.decoder, self.super_res_first, self.super_res_last,
                 self.prior, self.image_encoder]
        return [m for m in found if m is not None]


def _scheduler(folder: Path) -> SchedulerConfig:
    return from_config(SchedulerConfig, read_json(folder / "scheduler_config.json"))


def _image_encoder_folders(folder: Path, image_encoder: Path | None) -> tuple[Path, Path] | None:
    """(weights folder, preprocessor folder) of the image encoder, or None when the model has none."""
    if image_encoder is not None:
        return image_encoder, image_encoder
    if (folder / "image_encoder").is_dir():
        return folder / "image_encoder", folder / "feature_extractor"
    return None


def load_components(folder: Path, dtype: torch.dtype, device: torch.device,
                    image_encoder: Path | None = None, lazy: bool = False) -> Components:
    """Load the model in `folder` onto `device` in `dtype`; with `lazy`, each network's weights when it is first
    needed (`checkpoint.load_weights`).

    Raises `CheckpointError` for a folder that is not an unCLIP model, a missing component, or weights that do not
    fit their config. The prior is loaded when the model has one; the image encoder when the model folder has one or
    `image_encoder` names a folder holding one.
    """
    index = read_json(folder / "model_index.json")
    missing = [name for name in REQUIRED if name not in index or not (folder / name).is_dir()]
    if missing:
        raise CheckpointError(f"{folder}: component '{missing[0]}' is missing (no folder {missing[0]}/ or no "
                              "model_index.json entry)")
    has_prior = "prior" in index
    if has_prior and not (folder / "prior").is_dir():
        raise CheckpointError(f"{folder}: component 'prior' is missing (no folder prior/)")
    layout = conv_layout(torch.device(device))
    parts = Components(
        tokenizer=Tokenizer.from_folder(folder / "tokenizer"),
        text_encoder=load_component(folder, "text_encoder", CLIPTextConfig, CLIPTextEncoder, dtype, device, lazy),
        text_proj=load_component(folder, "text_proj", TextProjConfig, TextProjection, dtype, device, lazy),
        decoder=load_component(folder, "decoder", UNetConfig, UNet, dtype, device, lazy, layout),
        super_res_first=load_component(folder, "super_res_first", UNetConfig, UNet, dtype, device, lazy, layout),
        super_res_last=load_component(folder, "super_res_last", UNetConfig, UNet, dtype, device, lazy, layout),
        decoder_scheduler=_scheduler(folder / "decoder_scheduler"),
        super_res_scheduler=_scheduler(folder / "super_res_scheduler"),
    )
    if has_prior:
        parts.prior = load_component(folder, "prior", PriorConfig, PriorTransformer, dtype, device, lazy)
        parts.prior_scheduler = _scheduler(folder / "prior_scheduler")
    encoder_folders = _image_encoder_folders(folder, image_encoder)
    if encoder_folders is not None:
        parts.image_encoder, parts.preprocess = load_image_encoder(*encoder_folders, dtype, device, lazy)
    return parts


def load_image_encoder(weights: Path, processor: Path, dtype: torch.dtype, device: torch.device,
                       lazy: bool = False) -> tuple[CLIPVisionEncoder, PreprocessConfig]:
    """The CLIP vision tower in `weights` and the preprocessing config in `processor`'s preprocessor_config.json."""
    preprocess = from_config(PreprocessConfig, read_json(processor / "preprocessor_config.json"))
    return load_vision_encoder(weights, dtype, device, lazy), preprocess
