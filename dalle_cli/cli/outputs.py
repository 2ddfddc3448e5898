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
import re
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import DalleError, UsageError

RECORD_KEY = "dalle"  # the PNG text chunk holding the record
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)
TEMP_SUFFIX = ".{pid}.tmp"
LEFTOVER = re.compile(r"\..+\.(?P<pid>\d+)\.tmp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_writable(folder: Path) -> None:
    """Raise `UsageError` unless files can be written in `folder`, which need not exist yet: then its nearest existing
    parent must be a writable folder. Nothing is created, so a run refused later leaves no empty folder behind."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write to the output directory {folder}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to the output directory {folder}: {probe} is not writable")


def name_limit(folder: Path) -> int:
    """The longest file name in bytes that dalle gives an image in `folder`: the file system's limit less the room
    its hidden temporary name (`.NAME.PID.tmp`) and a "-NNN" suffix for a taken name need."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        longest = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    return longest - len(".." + TEMP_SUFFIX.format(pid=4194304)) - len("-999")


def looks_complete(path: Path) -> bool:
    """Whether `path` is a whole PNG file: its signature first and its IEND chunk last (two small reads, so a resume
    over many files stays fast). A file cut short by a kill, or a 0-byte one, is not."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-12, os.SEEK_END)
            tail = f.read(12)
    except OSError:
        return False
    return head == PNG_SIGNATURE and tail == PNG_END


def put_aside(path: Path) -> Path:
    """Rename a damaged file to NAME.damaged (or .damaged-1, ...), so its name is free again and nothing is lost."""
    aside = _free_name(path.with_name(path.name + ".damaged"))
    os.replace(path, aside)
    return aside


def remove_leftovers(folder: Path) -> int:
    """Remove the hidden temporary files that killed runs left in `folder` (`.NAME.PID.tmp` whose process is gone);
    a live process's are never touched. Returns how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = LEFTOVER.fullmatch(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass  # another run removed it, or it cannot be: leave it
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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


def write_png(image: Image.Image, target: Path, record: dict[str, Any], replace: bool = False) -> Path:
    """Write `image` as a PNG at `target`, or at `target` with "-1", "-2", ... added when that name is taken, with
    `record` plus its final "path" as JSON in the `dalle` text chunk. Returns the path written. With `replace`, a
    file at `target` is replaced instead (a run's own contact sheet, remade on resume).

    Atomic: the bytes go to a hidden temporary file that is flushed to disk before it gets its name. Raises
    `DalleError` when the disk is full or the file cannot be written; the temporary file is removed either way."""
    temporary = target.with_name("." + target.name + TEMP_SUFFIX.format(pid=os.getpid()))
    try:
        while True:
            final = target if replace else _free_name(target)
            info = PngInfo()
            info.add_itxt(RECORD_KEY, json.dumps({**record, "path": str(final)}, ensure_ascii=False))
            info.add_text("Software", f"dalle {record.get('dalle', '')}".strip())
            with open(temporary, "wb") as f:
                image.save(f, format="PNG", pnginfo=info)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(temporary, final)
                return final
            if _claim(temporary, final):
                return final
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DalleError(f"the disk is full: could not write {target}") from None
        raise DalleError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # never hide the error that stopped the write


def read_record(path: Path) -> dict[str, Any]:
    """The record a dalle PNG carries. Raises `UsageError` for a file that is not a PNG made by dalle."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(RECORD_KEY)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if text is None:
        raise UsageError(f"{path} holds no dalle record")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UsageError(f"{path}: its dalle record is not a JSON object")
    return record


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
