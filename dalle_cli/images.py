"""Images in and out: reading user files, CLIP's preprocessing, and turning generated tensors into pictures.

`preprocess` equals transformers' `CLIPImageProcessor` (its PIL backend) value for value: RGB conversion (alpha
composited onto white), a Pillow resize, a center crop, rescaling to [0, 1] and per-channel normalization, with the
same size arithmetic and float precision at each step. `to_pil` equals the diffusers unCLIP pipelines' conversion of
their [-1, 1] output, so saved images match the reference byte for byte. Only torch and Pillow are used.
"""

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageChops, ImageMath, ImageOps

from .errors import ConfigError, UsageError

if TYPE_CHECKING:
    from PIL import ImageCms

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


# Modes whose own `convert("RGB")` is right: checked with pure red, green, blue, white, black and mid grey (YCbCr
# lands within 1 of the RGB values, the others exactly). CMYK uses the naive formula R = (255 - C)(255 - K) / 255.
_PLAIN_MODES = frozenset({"1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PREMULTIPLIED_MODES = frozenset({"La", "RGBa"})


def _round_to_l(image: Image.Image, scale: float) -> Image.Image:
    """An "I" or "F" image whose values times `scale` lie in 0..255, as L with each value rounded half up. Pillow
    truncates when it converts to L, so adding 0.5 first rounds; `point` with a linear function runs in C."""
    return image.point(lambda v: v * scale + 0.5).convert("L")


def _integer_to_l(image: Image.Image) -> Image.Image:
    """An "I" or "I;16*" image as L: 16-bit values v become round(v / 257); an "I" image whose values all lie in 0..255
    keeps them. Raises `UsageError` for "I" values below 0 or above 65535."""
    wide = image.convert("I")  # Pillow's getextrema and point take "I" but not the byte-ordered 16-bit modes
    if image.mode == "I":
        low, high = wide.getextrema()
        if low < 0 or high > 65535:
            raise UsageError(f"32-bit integer pixels outside 0..65535 (min {low}, max {high})")
        if high <= 255:
            return wide.convert("L")
    return _round_to_l(wide, 1 / 257)  # v / 257 is never half-way between integers, so half-up equals round()


def _short(value: float) -> str:
    """A float32 value as few digits as tell it apart: -3.2, not -3.200000047683716."""
    return str(float(f"{value:.6g}"))


def _float_to_l(image: Image.Image) -> Image.Image:
    """An "F" image as L: values all in [0, 1] are multiplied by 255, else values all in [0, 255] kept, then rounded.
    Raises `UsageError` otherwise, and for NaN or infinite values."""
    # NaN is the only value unequal to itself; getextrema skips a NaN unless it is the first pixel, so look for it
    if ImageMath.lambda_eval(lambda a: a["x"] != a["x"], x=image).getextrema()[1]:
        raise UsageError("32-bit float pixels include NaN (dalle reads float pixels that all lie in 0..1 or in 0..255)")
    low, high = image.getextrema()
    if low < 0 or high > 255:
        raise UsageError(f"32-bit float pixels outside 0..1 and 0..255 (min {_short(low)}, max {_short(high)})")
    return _round_to_l(image, 255 if high <= 1 else 1)


def _opacity(image: Image.Image, transparent: float) -> Image.Image:
    """An L mask of an "I", "I;16*" or "F" image: 0 where a pixel equals `transparent` (PNG's tRNS grey), else 255.
    Compared before scaling to 8 bits, where neighbouring values would merge; Pillow's own transparency conversion
    compares after clipping to 0..255, so it misses every transparent value above 255."""
    wide = image if image.mode == "F" else image.convert("I")
    return ImageMath.lambda_eval(lambda a: (a["x"] != a["t"]) * 255, x=wide, t=transparent).convert("L")


def _flatten_premultiplied(image: Image.Image) -> Image.Image:
    """A "La" or "RGBa" image (colour already multiplied by alpha) composited onto white: c·a/255 + 255 - a per
    band, which for premultiplied c' is c' + (255 - a). Pillow converts neither mode correctly to RGB ("La" not at
    all, "RGBa" by dropping alpha, which composites onto black)."""
    *colours, alpha = image.split()
    see_through = ImageOps.invert(alpha)
    bands = [ImageChops.add(colour, see_through) for colour in colours]  # add clips at 255
    return Image.merge("RGB", bands * 3 if len(bands) == 1 else bands)


@lru_cache(maxsize=1)
def _lab_to_srgb() -> "ImageCms.ImageCmsTransform":
    """LittleCMS's CIE L*a*b* (D50, Pillow's 8-bit encoding: L 0..255 for 0..100, a and b offset by 128) to sRGB
    transform. Raises `UsageError` when Pillow was built without LittleCMS."""
    try:
        from PIL import ImageCms
    except ImportError:
        raise UsageError("LAB pixels need Pillow built with LittleCMS, and this Pillow is not") from None
    # cmsFLAGS_NOOPTIMIZE: the precomputed table Pillow's own LAB conversion uses turns white into (254, 255, 254)
    # and black into (1, 0, 1); the exact pipeline keeps both, at about 0.2 s per megapixel
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB",
                                   flags=0x0100)


def _has_transparency(image: Image.Image) -> bool:
    """Whether an 8-bit `image` carries transparency: an alpha band, a transparent colour or palette entry, or a
    palette with alpha."""
    return ("A" in image.getbands() or image.info.get("transparency") is not None
            or (image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")))


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB with its range kept, any transparency composited onto white. Every mode of this Pillow
    (`PIL.Image.MODES`) is converted or refused:

    - 1, L, P, PA, LA, RGB, RGBA, RGBX, CMYK, YCbCr, HSV: Pillow's conversion (CMYK by the naive formula, without
      an ICC profile).
    - La, RGBa (premultiplied alpha): composited onto white directly.
    - LAB: LittleCMS's L*a*b* (D50) to sRGB; refused when Pillow lacks LittleCMS.
    - I;16, I;16L, I;16B, I;16N: 0..65535 scaled to 0..255, round(v / 257).
    - I: values all in 0..255 kept; else, all in 0..65535, scaled as 16-bit; negative values or values above 65535
      refused.
    - F: values all in [0, 1] times 255, else values all in [0, 255] kept, rounded; anything else (NaN and
      infinities too) refused.
    - a transparent grey (PNG tRNS) of an I, I;16* or F image is matched exactly, before scaling.
    - any other mode (none in Pillow 13) refused.

    Raises `UsageError` with a one-line message naming the mode or the range for a refused image.
    """
    mode = image.mode
    if mode == "F" or mode == "I" or mode in _SIXTEEN_BIT_MODES:
        grey = _float_to_l(image) if mode == "F" else _integer_to_l(image)
        transparent = image.info.get("transparency")
        if transparent is None:
            return grey.convert("RGB")
        image = Image.merge("LA", (grey, _opacity(image, transparent)))
    elif mode in _PREMULTIPLIED_MODES:
        return _flatten_premultiplied(image)
    elif mode == "LAB":
        return _lab_to_srgb().apply(image)
    elif mode not in _PLAIN_MODES:
        raise UsageError(f"{mode} pixels are not supported")
    if _has_transparency(image):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read a user's picture in any format Pillow reads, upright (EXIF orientation applied) and in 8-bit RGB with its
    range kept and transparency flattened onto white (see `to_rgb`). Raises `UsageError("cannot read image <path>:
    ...")` for a missing, unreadable or non-image file, and for pixels `to_rgb` refuses."""
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


def fit(images: list[Image.Image], width: int, height: int) -> torch.Tensor:
    """Pictures as a model makes them, to be inverted: each centre-cropped to the aspect ratio width : height (the
    largest such box, offsets rounded down), resized to width x height with Pillow's bicubic filter (which
    antialiases when it shrinks) and mapped from [0, 255] to [-1, 1]: float32 [B, 3, height, width] on the CPU."""
    batch = []
    for image in images:
        image = to_rgb(image)
        crop_w, crop_h = min(image.width, image.height * width // height), min(image.height,
                                                                              image.width * height // width)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        box = (left, top, left + crop_w, top + crop_h)
        batch.append(_pixels(image.resize((width, height), Image.Resampling.BICUBIC, box=box)))
    return torch.stack(batch).float() / 127.5 - 1


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Generated images [B, 3, H, W] in [-1, 1] -> float32 [B, 3, H, W] in [0, 1] on the CPU, computed as the diffusers
    unCLIP pipelines do (x * 0.5 + 0.5 and the clamp in the images' own dtype, then float32)."""
    return (images * 0.5 + 0.5).clamp(0, 1).cpu().float()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Generated images [B, 3, H, W] in [-1, 1] -> RGB pictures, with diffusers' `numpy_to_pil` rounding
    (round half to even of x * 255)."""
    pixels = (to_unit_range(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # [B, H, W, 3]
    return [Image.frombytes("RGB", (p.shape[1], p.shape[0]), bytes(p.flatten().tolist())) for p in pixels]
