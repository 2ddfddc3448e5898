"""Images in and out: reading user files, CLIP's preprocessing, and turning generated tensors into pictures.

`preprocess` equals transformers' `CLIPImageProcessor` (its PIL backend) value for value: RGB conversion (alpha
composited onto white), a Pillow resize, a center crop, rescaling to [0, 1] and per-channel normalization, with the
same size arithmetic and float precision at each step. `to_pil` equals the diffusers unCLIP pipelines' conversion of
their [-1, 1] output, so saved images match the reference byte for byte. Only torch and Pillow are used.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from .errors import ConfigError, UsageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_FILTERS = (0, 1, 2, 3, 4, 5)  # NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING


def _size_dict(size: int | tuple[int, ...] | dict[str, int], square: bool, key: str) -> dict[str, int]:
    """A `size`/`crop_size` value in transformers' dict form: an int is a square when `square`, else the shortest edge;
    a pair is (height, width). Raises `ConfigError` for forms dalle does not implement."""
    if isinstance(size, int):
        return {"height": size, "width": size} if square else {"shortest_edge": size}
    if isinstance(size, tuple) and len(size) == 2:
        return {"height": size[0], "width": size[1]}
    if isinstance(size, dict) and (set(size) == {"height", "width"} or (set(size) == {"shortest_edge"} and not square)):
        return dict(size)
    raise ConfigError(f"feature_extractor: unsupported {key} {size!r} (dalle supports an int, [height, width], "
                      f"{{height, width}}{'' if square else ' or {shortest_edge}'})")


def _per_channel(value: float | tuple[float, ...], key: str) -> tuple[float, ...]:
    """A mean or std as one value per RGB channel; a scalar applies to all three."""
    values = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3:
        raise ConfigError(f"feature_extractor: {key} must hold 3 values (one per RGB channel), got {value!r}")
    return values


@dataclass
class PreprocessConfig:
    """`preprocessor_config.json` of a `CLIPImageProcessor` (or the older `CLIPFeatureExtractor`), with its defaults.

    Legacy forms are normalized on construction as transformers does: an int `size` is the shortest edge, an int
    `crop_size` a square, a scalar mean or std applies to every channel. Raises `ConfigError` for a size form or
    resampling filter dalle does not implement."""

    do_resize: bool = True
    size: int | tuple[int, ...] | dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3  # PIL.Image.BICUBIC
    do_center_crop: bool = True
    crop_size: int | tuple[int, ...] | dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: float | tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: float | tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        self.size = _size_dict(self.size, square=False, key="size")
        self.crop_size = _size_dict(self.crop_size, square=True, key="crop_size")
        self.image_mean = _per_channel(self.image_mean, "image_mean")
        self.image_std = _per_channel(self.image_std, "image_std")
        if self.resample not in PIL_FILTERS:
            raise ConfigError(f"feature_extractor: unsupported resample {self.resample!r} (dalle supports the Pillow "
                              f"filters {', '.join(map(str, PIL_FILTERS))})")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB mode; any transparency (an alpha band or a transparent palette entry) is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read a user's picture in any format Pillow reads, upright (EXIF orientation applied) and in RGB with
    transparency flattened onto white. Raises `UsageError("cannot read image <path>: ...")` for a missing,
    unreadable or non-image file."""
    try:
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image))
    except Exception as e:  # Pillow's decoders raise many error types for broken files
        raise UsageError(f"cannot read image {path}: {e}") from None


def _resized_shape(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """The (height, width) transformers resizes to: exact, or the shortest edge to `shortest_edge` with the long edge
    truncated, int(shortest_edge * long / short)."""
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    short, long = sorted((height, width))
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 tensor [3, H, W]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1)


def preprocess(images: list[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    """The CLIP image encoder's input for `images`: float32 [B, 3, crop height, crop width] on the CPU.

    Steps, each as `CLIPImageProcessor` does it: RGB conversion; Pillow resize; center crop at offset
    ((H - h) // 2, (W - w) // 2), zero-padded where the image is smaller; x * rescale_factor in float64, rounded to
    float32; (x - mean) / std in float32. Raises `UsageError` for a non-RGB image when the config turns off
    `do_convert_rgb` (the reference fails on those too).
    """
    batch = []
    for image in images:
        if cfg.do_convert_rgb:
            image = to_rgb(image)
        elif image.mode != "RGB":
            raise UsageError(f"a {image.mode} image needs RGB conversion, which the preprocessor config turns off")
        if cfg.do_resize:
            height, width = _resized_shape(image.height, image.width, cfg.size)
            image = image.resize((width, height), resample=cfg.resample)
        if cfg.do_center_crop:
            h, w = cfg.crop_size["height"], cfg.crop_size["width"]
            top, left = (image.height - h) // 2, (image.width - w) // 2
            image = image.crop((left, top, left + w, top + h))  # Pillow fills outside the image with zeros
        batch.append(_pixels(image))
    x = torch.stack(batch)  # [B, 3, h, w] uint8
    x = (x.double() * cfg.rescale_factor).float() if cfg.do_rescale else x.float()
    if cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(cfg.image_std, dtype=torch.float32)[:, None, None]
        x = (x - mean) / std
    return x


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Generated images [B, 3, H, W] in [-1, 1] -> float32 [B, 3, H, W] in [0, 1] on the CPU, computed as the diffusers
    unCLIP pipelines do (x * 0.5 + 0.5 and the clamp in the images' own dtype, then float32)."""
    return (images * 0.5 + 0.5).clamp(0, 1).cpu().float()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Generated images [B, 3, H, W] in [-1, 1] -> RGB pictures, with diffusers' `numpy_to_pil` rounding
    (round half to even of x * 255)."""
    pixels = (to_unit_range(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # [B, H, W, 3]
    return [Image.frombytes("RGB", (p.shape[1], p.shape[0]), bytes(p.flatten().tolist())) for p in pixels]
