"""The model registry: the models dalle knows by name, read from `weights/registry.json` without importing torch.

Each entry of the file's `models` object maps an alias to a model made of one or more hub repos, or to a local folder:
- one hub repo: `repo_id`, `revision` (a commit sha; a branch only with an `unpinned` key saying why) and `files`, the
  exact paths or fnmatch patterns to fetch: configs, tokenizer files and `*.safetensors`, never pickle formats;
- several hub repos: `repos`, an object from each part's role (the family's roles: "prior", "decoder", ...) to an
  object with those three keys (and `unpinned`);
- a local folder: `path`, relative to the registry file's folder.

Every entry may carry `family` (the model family, default "unclip"), `description`, `license`, `size_bytes` (all its
repos together, with `size_exact`; a local folder's size is read from the disk instead), the default sampling
settings `defaults` (checked against the family's settings; missing keys take the family's, or those of the folder's
`dalle.json`), the fast preset `fast` (settings laid over the defaults, over the folder's and the family's presets),
`kind` ("model", the default, or
"image_encoder") and, for unCLIP models without an image encoder of their own, `image_encoder`: the alias of the
encoder their variations use. Keys starting with `_` are notes.

`DALLE_REGISTRY` names another registry file (used by the tests, and for private model collections).
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DalleError
from .families import FAMILIES, family_named
from .settings import Settings

# weights/ ships inside the package as dalle_cli/weights in a wheel (see pyproject.toml); in a checkout, and so in an
# editable install, it sits beside the package.
_PACKAGED = Path(__file__).resolve().parent / "weights"
WEIGHTS_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "weights"
DEFAULT_PATH = WEIGHTS_DIR / "registry.json"
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# Weight formats dalle never downloads: pickles (which can run arbitrary code when loaded) and other frameworks' twins.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
FORBIDDEN_SUFFIXES = (*PICKLE_SUFFIXES, ".msgpack", ".h5", ".onnx", ".gguf")
KINDS = ("model", "image_encoder")
REPO_KEYS = {"repo_id", "revision", "unpinned", "files"}
ENTRY_KEYS = {*REPO_KEYS, "repos", "description", "path", "license", "size_bytes", "size_exact", "defaults", "fast",
              "family", "kind", "image_encoder"}


@dataclass(frozen=True)
class Repo:
    """One pinned hub repo of a registry entry and the files dalle fetches from it."""

    repo_id: str
    revision: str
    files: tuple[str, ...]
    unpinned: str | None = None


@dataclass(frozen=True)
class Entry:
    """One registry alias: either `repos` (role -> hub repo) or a local folder `path` is set."""

    alias: str
    family: str = "unclip"
    description: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    path: Path | None = None
    license: str = "unknown"
    size_bytes: int = 0
    size_exact: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    fast: dict[str, Any] = field(default_factory=dict)
    kind: str = "model"
    image_encoder: str | None = None

    def settings(self, base: Settings | None = None) -> Settings:
        """The entry's default settings over `base` (the family's defaults when None)."""
        base = base or FAMILIES[self.family].settings()
        return base.updated(self.defaults, f"registry entry {self.alias!r} defaults", ConfigError)


def registry_path() -> Path:
    """The registry file in use: `$DALLE_REGISTRY` when set, else dalle's own `weights/registry.json`."""
    override = os.environ.get("DALLE_REGISTRY")
    return Path(override).expanduser() if override else DEFAULT_PATH


def is_int_in(value: Any, low: int, high: int) -> bool:
    """Whether `value` is an integer from `low` to `high`; JSON's true and false (Python bools) are not."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _repo(raw: dict[str, Any], where: str) -> Repo:
    revision = raw.get("revision")
    if "repo_id" not in raw or not isinstance(raw["repo_id"], str):
        raise ConfigError(f"{where}: repo_id must be a hub id owner/name")
    if not isinstance(revision, str) or not (COMMIT_SHA.fullmatch(revision) or raw.get("unpinned")):
        raise ConfigError(f"{where}: revision must be a 40-hex commit sha (or say why not in 'unpinned')")
    files = raw.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"{where}: files must be a non-empty list of paths or patterns")
    banned = [f for f in files if f.lower().endswith(FORBIDDEN_SUFFIXES)]
    if banned:
        raise ConfigError(f"{where}: {banned[0]} is a pickle or foreign weight format; list *.safetensors instead")
    return Repo(raw["repo_id"], revision, tuple(files), raw.get("unpinned"))


def _repos(values: dict[str, Any], kind: str, family: str, where: str) -> dict[str, Repo]:
    """The hub repos of an entry by role: one repo given inline takes the family's first role (or "image_encoder")."""
    inline = {k: values.pop(k) for k in REPO_KEYS & set(values)}
    if "repos" not in values:
        role = "image_encoder" if kind == "image_encoder" else FAMILIES[family].roles[0]
        return {role: _repo(inline, where)}
    if inline:
        raise ConfigError(f"{where}: give repo_id, revision and files inside repos, not beside it")
    raw = values.pop("repos")
    roles = FAMILIES[family].roles
    if not isinstance(raw, dict) or not raw or not all(isinstance(r, dict) for r in raw.values()):
        raise ConfigError(f"{where}: repos must map each part's role to an object with repo_id, revision and files")
    strange = sorted(set(raw) - set(roles))
    if strange:
        raise ConfigError(f"{where}: repos has a part {strange[0]!r}, which the {family} family does not have "
                          f"(its parts: {', '.join(roles)})")
    return {role: _repo(repo, f"{where} repos.{role}") for role, repo in raw.items()}


def _entry(alias: str, raw: Any, folder: Path) -> Entry:
    where = f"registry entry {alias!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a JSON object")
    values = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(values) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    if ("repo_id" in values or "repos" in values) == ("path" in values):
        raise ConfigError(f"{where}: give exactly one of repo_id or repos (a hub model) and path (a local folder)")
    kind = values.get("kind", "model")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    try:
        family = family_named(values.get("family", "unclip"), where).name
    except DalleError as e:
        raise ConfigError(str(e)) from None
    values["family"] = family
    if "path" in values:
        values["path"] = folder / values["path"]
    else:
        values["repos"] = _repos(values, kind, family, where)
    for key in ("defaults", "fast"):
        if not isinstance(values.get(key, {}), dict):
            raise ConfigError(f"{where}: {key} must be a JSON object")
    entry = Entry(alias=alias, **values)
    entry.settings().updated(entry.fast, f"{where} fast", ConfigError)  # check both now, against the family's
    return entry


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
