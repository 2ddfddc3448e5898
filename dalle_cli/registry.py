"""The model registry: the models dalle knows by name, read from `weights/registry.json` without importing torch.

Each entry of the file's `models` object maps an alias to either
- a hub repo: `repo_id`, `revision` (a commit sha; a branch only with an `unpinned` key saying why), and `files`, the
  exact paths or fnmatch patterns to fetch: configs, tokenizer files and `*.safetensors`, never pickle formats; or
- a local folder: `path`, relative to the registry file's folder.
and carries `description`, `license`, `size_bytes` (with `size_exact`), the default sampling settings `defaults`
(missing keys take Karlo's), `kind` ("unclip", the default, or "image_encoder") and, for unCLIP models without an image
encoder of their own, `image_encoder`: the alias of the encoder `dalle vary` uses. Keys starting with `_` are notes.

`DALLE_REGISTRY` names another registry file (used by the tests, and for private model collections).
"""

import json
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, DalleError
from .pipelines.api import Settings

# weights/ ships inside the package as dalle_cli/weights in a wheel (see pyproject.toml); in a checkout, and so in an
# editable install, it sits beside the package.
_PACKAGED = Path(__file__).resolve().parent / "weights"
WEIGHTS_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "weights"
DEFAULT_PATH = WEIGHTS_DIR / "registry.json"
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# Weight formats dalle never downloads: pickles (which can run arbitrary code when loaded) and other frameworks' twins.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
FORBIDDEN_SUFFIXES = (*PICKLE_SUFFIXES, ".msgpack", ".h5", ".onnx", ".gguf")
KINDS = ("unclip", "image_encoder")
ENTRY_KEYS = {"description", "repo_id", "revision", "unpinned", "files", "path", "license", "size_bytes", "size_exact",
              "defaults", "kind", "image_encoder"}


@dataclass(frozen=True)
class Entry:
    """One registry alias. Exactly one of `repo_id` (a hub model) and `path` (a local folder) is set."""

    alias: str
    description: str = ""
    repo_id: str | None = None
    revision: str | None = None
    unpinned: str | None = None
    files: tuple[str, ...] = ()
    path: Path | None = None
    license: str = "unknown"
    size_bytes: int = 0
    size_exact: bool = False
    defaults: Settings = Settings()
    kind: str = "unclip"
    image_encoder: str | None = None


def registry_path() -> Path:
    """The registry file in use: `$DALLE_REGISTRY` when set, else dalle's own `weights/registry.json`."""
    override = os.environ.get("DALLE_REGISTRY")
    return Path(override).expanduser() if override else DEFAULT_PATH


def is_int_in(value: Any, low: int, high: int) -> bool:
    """Whether `value` is an integer from `low` to `high`; JSON's true and false (Python bools) are not."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def apply_settings(base: Settings, raw: dict[str, Any], where: str, error: type[DalleError] = ConfigError) -> Settings:
    """`base` with the sampling keys of `raw` replaced. Step counts must be integers from 2 to 1000 and guidance
    scales numbers of at least 1 (1 turns guidance off). Raises `error`, its message starting with `where`, for an
    unknown key or a bad value."""
    names = [f.name for f in fields(Settings)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise error(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(names)})")
    for key, value in raw.items():
        if key.endswith("_steps"):
            if not is_int_in(value, 2, 1000):
                raise error(f"{where}: {key} must be an integer from 2 to 1000, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
            raise error(f"{where}: {key} must be a number of at least 1 (1 turns guidance off), got {value!r}")
    return replace(base, **{key: (value if key.endswith("_steps") else float(value)) for key, value in raw.items()})


def _entry(alias: str, raw: Any, folder: Path) -> Entry:
    where = f"registry entry {alias!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a JSON object")
    values = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(values) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    if ("repo_id" in values) == ("path" in values):
        raise ConfigError(f"{where}: give exactly one of repo_id (a hub model) and path (a local folder)")
    if values.get("kind", "unclip") not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    if "repo_id" in values:
        revision = values.get("revision")
        if not isinstance(revision, str) or not (COMMIT_SHA.fullmatch(revision) or values.get("unpinned")):
            raise ConfigError(f"{where}: revision must be a 40-hex commit sha (or say why not in 'unpinned')")
        files = values.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise ConfigError(f"{where}: files must be a non-empty list of paths or patterns")
        banned = [f for f in files if f.lower().endswith(FORBIDDEN_SUFFIXES)]
        if banned:
            raise ConfigError(f"{where}: {banned[0]} is a pickle or foreign weight format; list *.safetensors instead")
        values["files"] = tuple(files)
    else:
        values["path"] = folder / values["path"]
    values["defaults"] = apply_settings(Settings(), values.get("defaults", {}), f"{where} defaults")
    return Entry(alias=alias, **values)


def load_registry(path: Path | None = None) -> dict[str, Entry]:
    """Every entry of the registry file (default: `registry_path()`), by alias. Raises `ConfigError` for a missing or
    malformed file, and for an `image_encoder` that names no image-encoder entry."""
    path = path or registry_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"the model registry {path} is missing (set DALLE_REGISTRY to use another file)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the model registry {path}: {e}") from None
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"the model registry {path} has no 'models' object")
    entries = {alias: _entry(alias, value, path.parent) for alias, value in models.items()}
    for entry in entries.values():
        encoder = entries.get(entry.image_encoder) if entry.image_encoder else None
        if entry.image_encoder and (encoder is None or encoder.kind != "image_encoder"):
            raise ConfigError(f"registry entry {entry.alias!r}: image_encoder {entry.image_encoder!r} is not an "
                              "image-encoder entry of the registry")
    return entries


def format_size(size: int) -> str:
    """Bytes in decimal units as the Hub shows them: 13690000000 -> "13.7 GB", 316 -> "316 B"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
