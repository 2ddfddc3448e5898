"""`dalle edit`: repaint a masked region of a picture from a prompt, or remake the whole picture from it (image to
image), with any family (see `engine.model.Model.edit`).

The images of a run are written as they are made, batch by batch, each PNG with its record: the picture and the
mask with their sha256, the prompt, the seed, the model and its settings (the strength used among them), and
`again`, the command that makes that image again in the batch it was made in. Errors are one line, as everywhere
in the CLI; a bad mask is refused before any network runs.
"""

from pathlib import Path
from typing import Any

from ..errors import UsageError
from .display import Display
from .manipulate import Input, Run, frames_in_batches, read_input, timed
from .options import Common


def _own_mask(picture: Path) -> Any:
    """The picture itself, with its alpha, when it has transparency (it is then its own mask), else None."""
    from PIL import Image, ImageOps

    from ..masks import has_transparency

    with Image.open(picture) as image:
        upright = ImageOps.exif_transpose(image)
        return upright.copy() if has_transparency(upright) else None


def _mask_image(mask: Input) -> Any:
    from PIL import Image, ImageOps

    with Image.open(mask.path) as image:  # type: ignore[arg-type]
        return ImageOps.exif_transpose(image).copy()


def edit(image: str, prompt: str, mask: str | None, invert_mask: bool, only: int | None, *, common: Common,
         settings: dict[str, Any]) -> None:
    """The body of `dalle edit` (see `commands.edit`)."""
    from ..images import load_image
    from .display import guarded

    display = Display(common.quiet, common.json_lines)
    with guarded(display, common.debug, out=common.out):
        if not prompt.strip():
            raise UsageError("the prompt is empty: say what the edit should paint")
        picture = read_input(image, "the picture", pictures_only=True)
        given_mask = read_input(mask, "the mask", pictures_only=True) if mask is not None else None
        mask_image = _mask_image(given_mask) if given_mask is not None else _own_mask(picture.path)  # type: ignore
        if invert_mask and mask_image is None:
            raise UsageError("--invert-mask needs a mask (--mask, or a picture with transparency)")
        todo = frames_in_batches(common.num, common.batch_size, only)
        run = Run(display, common, "edit", settings)
        run.settings = run.model.edit_settings(run.settings, mask_image is not None)
        source = load_image(picture.path)  # type: ignore[arg-type]
        seed = run.seed()
        again = ["dalle", "edit", image, prompt, *(["--mask", mask] if mask is not None else []),
                 *(["--invert-mask"] if invert_mask else []), "--seed", seed, "-n", common.num, *run.options]
        facts: dict[str, Any] = {"edit": picture.record(), "prompt": prompt.strip()}
        if given_mask is not None:
            facts |= {"mask": str(given_mask.path), "mask_sha256": given_mask.digest}
        elif mask_image is not None:
            facts |= {"mask": "the picture's transparency"}
        if mask_image is not None:
            facts |= {"invert_mask": invert_mask}
        events = run.model.edit_events(run.settings, mask_image is not None)
        with display.progress(common.num, events * len(todo)) as meter:
            for batch in todo:
                report = meter.batch(batch)
                images, seconds = timed(lambda: run.model.edit(
                    [source] * len(batch), [prompt.strip()] * len(batch), [seed + k for k in batch], run.settings,
                    masks=[mask_image] * len(batch) if mask_image is not None else None, invert_mask=invert_mask,
                    progress=report))
                run.write(images, batch[0], f"{picture.label}-{prompt}", seed,
                          [{**facts, "image_seed": seed + k} for k in batch], again, seconds, only)
        run.finish(None, "edit", "image")
