"""File names of output images: a format template over a few fields, with the prompt as a slug. No imports beyond
the standard library, so the CLI can show the default template in --help cheaply."""

import os
import re
import string
import unicodedata
from typing import Any

from ..errors import UsageError

DEFAULT_TEMPLATE = "{index:04d}-{slug}-{seed}"
NOT_SLUG = re.compile(r"[^a-z0-9]+")
TEMPLATE_FIELDS = {
    "index": "position of the image in this run, from 0",
    "slug": "the prompt (or the input file's name) in lowercase ASCII words joined by '-'",
    "seed": "the image's seed",
    "i": "number of the image within its prompt or input image, from 0",
    "item": "number of the prompt or input image, from 0",
    "model": "the model's name",
}


def slugify(text: str, limit: int = 60) -> str:
    """`text` as a file-name-safe slug: accents dropped, lowercase ASCII letters and digits in words joined by '-',
    at most `limit` characters, cut at a word boundary. "image" when nothing is left."""
    ascii_text = text if text.isascii() else unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    if len(slug) > limit:
        slug = slug[:limit + 1].rsplit("-", 1)[0] if "-" in slug[:limit + 1] else slug[:limit]
    return slug or "image"


def check_template(template: str) -> None:
    """Raise `UsageError` unless `template` is a format string over `TEMPLATE_FIELDS` that can vary per image."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise UsageError(f"--name {template!r} is not a valid template: {e}") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise UsageError(f"--name: unknown field {{{unknown[0]}}} (known: "
                         f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})")
    if not names & {"index", "seed", "i"}:
        raise UsageError("--name must hold {index}, {seed} or {i}, or every image would get the same name")
    # Render once with the widest values, so a spec that cannot format them (or asks for a million-character
    # field) is refused now, before any model loads.
    render_name(template, index=10**6, slug="x" * 60, seed=2**63 - 1, i=10**4, item=10**6, model="x" * 60)


def render_name(template: str, **fields: Any) -> str:
    """The file name `template` gives an image: fields filled in, ".png" added unless present. Raises `UsageError`
    for a format spec that does not fit its value, or a name that is empty or holds a path separator."""
    try:
        name = template.format(**fields)
    except (ValueError, TypeError, IndexError, OverflowError) as e:
        raise UsageError(f"--name {template!r}: {e}") from None
    except MemoryError:
        raise UsageError(f"--name {template!r}: a field is too wide to format") from None
    if not name.lower().endswith(".png"):
        name += ".png"
    if name == ".png" or name.startswith(".") or "/" in name or os.sep in name:
        raise UsageError(f"--name {template!r} gives the file name {name!r}: names cannot be hidden or hold a "
                         "path separator")
    return name
