"""Edit masks: which pixels of a picture an edit repaints, in the two conventions people have files in.

The rule that picks the convention, from the mask file alone:
- a mask with transparency (an alpha channel with at least one pixel below 255, or a palette with a transparent
  colour) reads its alpha: transparent pixels (alpha below 128) are repainted, as OpenAI's images API reads an
  RGBA mask, or a picture with a hole cut in it;
- any other mask reads its brightness (greyscale, 1-bit, or RGB as luminance): white (128 and above) is repainted,
  as diffusers' inpainting pipelines read a mask since 0.19.
`invert` flips the result. A mask is resized to the picture with nearest-neighbour (its edges stay hard), after
the same centre crop the picture gets, so the two stay aligned.

After an edit the picture is pasted back outside the mask (`paste`), so those pixels are the picture's own. The
seam is feathered over a band *inside* the mask, `feather_width` pixels wide (1/64 of the longer side, at least one
pixel), so the repainted region blends in while not a pixel outside the mask changes.
"""

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UsageError

THRESHOLD = 128
ASPECT_TOLERANCE = 0.01  # a mask's aspect ratio may differ from the picture's by a pixel, or this fraction


def has_transparency(image: Image.Image) -> bool:
    """Whether `image` has any pixel that is not fully opaque."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        low, _ = image.getchannel("A").getextrema()
        return low < 255
    return False


def read_mask(image: Image.Image, invert: bool = False) -> Image.Image:
    """The repaint mask of a mask image, by the module's rule: mode "L", 255 where the edit repaints, else 0."""
    if has_transparency(image):
        alpha = image.convert("RGBA").getchannel("A")
        repaint = alpha.point(lambda a: 255 if a < THRESHOLD else 0)
    else:
        repaint = image.convert("L").point(lambda v: 255 if v >= THRESHOLD else 0)
    return repaint.point(lambda v: 255 - v) if invert else repaint


def fit_mask(mask: Image.Image, picture: tuple[int, int], width: int, height: int) -> torch.Tensor:
    """A repaint mask ("L", from `read_mask`) for a picture of size `picture` (w, h), as a tensor [1, 1, height,
    width] of 0 and 1 (1 = repaint): resized to the picture with nearest-neighbour, centre-cropped to the aspect
    ratio of width x height as `images.fit` crops the picture, and resized again with nearest-neighbour.

    Raises `UsageError` when the mask's aspect ratio is not the picture's, and when it repaints nothing or
    everything of what the edit sees."""
    (mw, mh), (pw, ph) = mask.size, picture
    if abs(mw * ph / mh - pw) > max(1.0, ASPECT_TOLERANCE * pw):  # its width at the picture's height, ± rounding
        raise UsageError(f"the mask is {mw}x{mh} but the picture is {pw}x{ph}: give a mask of the picture's shape")
    mask = mask.resize((pw, ph), Image.Resampling.NEAREST)
    crop_w, crop_h = min(pw, ph * width // height), min(ph, pw * height // width)  # the crop `images.fit` takes
    left, top = (pw - crop_w) // 2, (ph - crop_h) // 2
    mask = mask.resize((width, height), Image.Resampling.NEAREST, box=(left, top, left + crop_w, top + crop_h))
    values = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(1, 1, height, width)
    repaint = (values >= THRESHOLD).float()
    if not repaint.any():
        raise UsageError("the mask repaints nothing: its white pixels (transparent ones, in a mask with "
                         "transparency) mark where to repaint, unless the mask is inverted")
    if repaint.all():
        raise UsageError("the mask repaints the whole picture, which is not an edit: make an image of the prompt, "
                         "or edit the picture without a mask at a strength")
    return repaint


def feather_width(width: int, height: int) -> int:
    """The width in pixels of the band inside a mask's edge over which `paste` blends: 1/64 of the longer side."""
    return max(1, max(width, height) // 64)


def feather(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Soft masks [B, 1, H, W] in [0, 1] of binary masks [B, 1, H, W]: 0 on and outside the mask's edge, rising
    to 1 over `width` pixels inside it (the mean of `width` successive 3x3 erosions), so that blending with them
    changes nothing outside the mask."""
    eroded, soft = masks.float(), torch.zeros_like(masks, dtype=torch.float32)
    for _ in range(width):
        eroded = -F.max_pool2d(-eroded, 3, stride=1, padding=1)  # erosion; the border counts as repainted
        soft = soft + eroded
    return soft / width


def paste(edited: torch.Tensor, picture: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The edited pictures [B, 3, H, W] where `soft` [B, 1, H, W] is 1, the pictures themselves where it is 0."""
    soft = soft.to(edited.device, edited.dtype)
    return soft * edited + (1 - soft) * picture.to(edited.device, edited.dtype)
