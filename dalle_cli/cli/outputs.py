"""Output files: PNGs written atomically with their reproduction record, and contact sheets.

Every image is written to a hidden temporary file in the output folder, flushed to disk, then hard-linked to its final
name, which fails rather than replace an existing file; so an interrupted run never leaves a half-written image and a
file is never overwritten. Each PNG carries its record (prompt or source, seed, model, settings, ...) as JSON in the
`dalle` text chunk, so the image says how to make it again. Pillow only: no torch here.
"""

import errno
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import DalleError, UsageError

RECORD_KEY = "dalle"  # the PNG text chunk holding the record
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def ensure_writable(folder: Path) -> None:
    """Create `folder` if needed and check a file can be created in it; `UsageError` otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".dalle-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to the output directory {folder}: {e.strerror or e}") from None


def _free_name(target: Path) -> Path:
    """The first of target, target-1, target-2, ... that does not exist."""
    for k in itertools.count():
        candidate = target if k == 0 else target.with_name(f"{target.stem}-{k}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


def _claim(temporary: Path, final: Path) -> bool:
    """Give `temporary` the name `final` unless a file took it meanwhile (then False). Never replaces a file."""
    try:
        os.link(temporary, final)
    except FileExistsError:
        return False
    except OSError as e:  # a file system without hard links: check, then rename
        if e.errno not in NO_HARD_LINKS:
            raise
        if final.exists():
            return False
        os.replace(temporary, final)
    return True


def write_png(image: Image.Image, target: Path, record: dict[str, Any]) -> Path:
    """Write `image` as a PNG at `target`, or at `target` with "-1", "-2", ... added when that name is taken, with
    `record` plus its final "path" as JSON in the `dalle` text chunk. Returns the path written.

    Atomic: the bytes go to a hidden temporary file that is flushed to disk before it gets its name. Raises
    `DalleError` when the disk is full or the file cannot be written; the temporary file is removed either way."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        while True:
            final = _free_name(target)
            info = PngInfo()
            info.add_itxt(RECORD_KEY, json.dumps({**record, "path": str(final)}, ensure_ascii=False))
            info.add_text("Software", f"dalle {record.get('dalle', '')}".strip())
            with open(temporary, "wb") as f:
                image.save(f, format="PNG", pnginfo=info)
                f.flush()
                os.fsync(f.fileno())
            if _claim(temporary, final):
                return final
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DalleError(f"the disk is full: could not write {target}") from None
        raise DalleError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        temporary.unlink(missing_ok=True)


def read_record(path: Path) -> dict[str, Any]:
    """The record a dalle PNG carries. Raises `UsageError` for a file that is not a PNG made by dalle."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(RECORD_KEY)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if text is None:
        raise UsageError(f"{path} holds no dalle record")
    return json.loads(text)


def grid_columns(count: int, per_item: int) -> int:
    """Columns of a contact sheet: one row per prompt when each has several images, else as square as possible."""
    if 1 < per_item <= 16 and count % per_item == 0:
        return per_item
    return math.ceil(math.sqrt(count))


def contact_sheet(images: list[Image.Image], columns: int, gap: int = 4) -> Image.Image:
    """The images in rows of `columns`, in order, on white, `gap` pixels apart; cells are the largest image's size."""
    width = max(i.width for i in images)
    height = max(i.height for i in images)
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "white")
    for k, image in enumerate(images):
        row, column = divmod(k, columns)
        sheet.paste(image.convert("RGB"), (column * (width + gap), row * (height + gap)))
    return sheet
