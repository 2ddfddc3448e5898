"""Where models come from: a model spec resolved to its family, its default settings and the folders it is made of.

A spec is a registry alias (`karlo`), a local folder or a hub id `owner/name[@revision]`, tried in that order (write
`./karlo` for a folder named like an alias). `locate` reads only the registry and local files, except for a hub id
outside the registry, whose snapshot it downloads to learn the model's family. Each part of a model (its family's
roles: "model", Karlo's separate "image_encoder", ...) is a local folder or a hub repo; a repo is fetched when a
caller first asks for its folder, so loading a model fetches what loading needs, and an operation that needs another
part (variations need the image encoder) fetches that part when it first runs.

A model folder may carry `dalle.json`, dalle's settings for that folder, so that the folder samples as its makers meant:

    {"family": "unclip", "defaults": {"prior_steps": 15, "decoder_guidance": 2.0}}

`family` names the model family (without it, the family comes from `model_index.json`'s `_class_name`) and `defaults`
overrides the family's default settings. `fast`, as optional, is the model's fast preset: settings laid over its
defaults (fewer steps, a faster sampler) over the family's own preset (`Family.fast`). A registry entry's own
`defaults` and `fast` override the folder's, and a folder that is a registry model's folder (a shipped model, or the
cache snapshot of a pinned repo) is that registry model.
No torch here.
"""

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .api import ModelInfo
from .configs import read_json
from .errors import ConfigError, ModelNotFoundError, UsageError
from .families import Family, family_named, family_of_class
from .hub import DEFAULT_FILES, Source, fetch, source_of
from .registry import Entry, load_registry
from .settings import Settings

Notice = Callable[[str], None]
FOLDER_FILE = "dalle.json"
FOLDER_KEYS = {"family", "defaults", "fast"}
# A hub id as huggingface_hub accepts it: no leading or trailing '.' or '-', no '..' or '--'.
_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(@(?P<revision>[\w./-]+))?")


@dataclass(frozen=True)
class Part:
    """One folder of a model: a local `folder`, or a hub repo (`source`) fetched on first use, or both (a snapshot
    already downloaded, which records still name by its repo)."""

    folder: Path | None = None
    source: Source | None = None


@dataclass(frozen=True)
class ModelSource:
    """What resolution produced: the model's `name`, `family`, `defaults` (its settings) and `fast` (its fast
    preset's), and its `parts` by role. With `offline`, parts that are not on disk are never downloaded."""

    name: str
    family: Family
    defaults: Settings
    fast: Settings
    parts: dict[str, Part]
    offline: bool = False
    folders: dict[str, Path] = field(default_factory=dict, compare=False)  # parts fetched so far

    def has(self, role: str) -> bool:
        """Whether the model has a part `role`, on disk or fetchable."""
        return role in self.parts

    def folder(self, role: str, on_notice: Notice | None = None, why: str = " on first use") -> Path:
        """The local folder of part `role`, downloading it first when needed (announced through `on_notice` with its
        size). Raises `DownloadError` when offline and not downloaded, or when the download fails."""
        if role not in self.folders:
            part = self.parts[role]
            if part.folder is not None:
                self.folders[role] = part.folder
            else:
                assert part.source is not None
                self.folders[role] = fetch(part.source, offline=self.offline, on_notice=on_notice, why=why)
        return self.folders[role]

    def fetch_all(self, on_notice: Notice | None = None) -> dict[str, Path]:
        """Every part's folder, downloading what is missing."""
        return {role: self.folder(role, on_notice, why="") for role in self.parts}

    def info(self) -> ModelInfo:
        """Where the model came from, for records: the first part's repo and revision (the snapshot's commit) or
        path, and one "repo@commit" (or path) per further part fetched so far. The first is the family's first role
        (Karlo's "model", Kandinsky's "decoder")."""
        order = {role: k for k, role in enumerate(self.family.roles)}
        first, *others = sorted((role for role in self.parts if role in self.folders), key=lambda r: order.get(r, 99))

        def label(role: str) -> str:
            part, folder = self.parts[role], self.folders[role]
            return f"{part.source.repo_id}@{folder.name}" if part.source is not None else str(folder)

        part, folder = self.parts[first], self.folders[first]
        if part.source is None:
            return ModelInfo(self.name, path=str(folder.resolve()), extras={r: label(r) for r in others})
        return ModelInfo(self.name, part.source.repo_id, folder.name, str(folder), {r: label(r) for r in others})


def folder_settings(folder: Path, base: Settings | None = None) -> tuple[Family, str, Settings, dict[str, Any]]:
    """The family, role, default settings and fast preset of a model folder: the family from its `dalle.json` when
    it has one, else from the `_class_name` of its `model_index.json`, which also says the folder's role (the
    family's first role when the family does not list the class); the defaults are the family's (or `base`, when
    given, of the same family) with the `dalle.json` ones over them; the preset is the settings to lay over the
    defaults (the family's preset with the `dalle.json` one over it), checked. Raises
    `ModelNotFoundError` for a folder without `model_index.json` or of a family dalle does not run, and `ConfigError`
    for a malformed `dalle.json`."""
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a model folder (it has no model_index.json)")
    own: dict[str, Any] = read_json(folder / FOLDER_FILE) if (folder / FOLDER_FILE).is_file() else {}
    where = str(folder / FOLDER_FILE)
    unknown = sorted(k for k in set(own) - FOLDER_KEYS if not k.startswith("_"))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(FOLDER_KEYS))})")
    class_name = read_json(folder / "model_index.json").get("_class_name")
    if "family" in own:
        family = family_named(own["family"], where)
        role = family.class_names.get(class_name, family.roles[0]) if isinstance(class_name, str) else family.roles[0]
    else:
        family, role = family_of_class(class_name, str(folder))
    defaults, fast = own.get("defaults", {}), own.get("fast", {})
    for key, value in (("defaults", defaults), ("fast", fast)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a JSON object")
    start = base if base is not None and isinstance(base, family.settings) else family.settings()
    settings = start.updated(defaults, f"{where} defaults", ConfigError)
    preset = {**family.fast, **fast}
    settings.updated(preset, f"{where} fast", ConfigError)
    return family, role, settings, preset


def _entry_source(entry: Entry, registry: dict[str, Entry], offline: bool) -> ModelSource:
    family = family_named(entry.family, f"registry entry {entry.alias!r}")
    if entry.path is not None:
        if not entry.path.is_dir():
            raise ModelNotFoundError(f"model {entry.alias!r} is not in this checkout: {entry.path} does not exist")
        _, _, folder_defaults, preset = folder_settings(entry.path)
        defaults = entry.settings(folder_defaults)
        parts = {family.roles[0]: Part(folder=entry.path)}
    else:
        defaults, preset = entry.settings(), dict(family.fast)
        parts = {role: Part(source=source_of(entry, repo)) for role, repo in entry.repos.items()}
    fast = defaults.updated({**preset, **entry.fast}, f"registry entry {entry.alias!r} fast", ConfigError)
    if entry.image_encoder is not None:
        encoder = registry[entry.image_encoder]
        parts["image_encoder"] = (Part(folder=encoder.path) if encoder.path is not None
                                  else Part(source=source_of(encoder, encoder.repos["image_encoder"])))
    return ModelSource(entry.alias, family, defaults, fast, parts, offline)


def _registry_folder(folder: Path, registry: dict[str, Entry]) -> Entry | None:
    """The registry entry whose model `folder` is: a local entry's folder, or the cache snapshot of a pinned repo."""
    resolved = folder.resolve()
    for entry in registry.values():
        if entry.kind == "model" and entry.path is not None and entry.path.resolve() == resolved:
            return entry
    snapshots = resolved.parent
    if snapshots.name != "snapshots" or not snapshots.parent.name.startswith("models--"):
        return None
    repo_id = snapshots.parent.name.removeprefix("models--").replace("--", "/")
    for entry in registry.values():
        first = next(iter(entry.repos.values()), None)
        if entry.kind == "model" and first is not None and (first.repo_id, first.revision) == (repo_id, resolved.name):
            return entry
    return None


def _hub_source(spec: str, registry: dict[str, Entry]) -> Source:
    """The hub repo of a spec that is no alias and no folder. Raises `ModelNotFoundError` for anything else."""
    match = HUB_ID.fullmatch(spec)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise ModelNotFoundError(f"{spec}: no such model folder")
        known = ", ".join(alias for alias, e in registry.items() if e.kind == "model")
        raise ModelNotFoundError(f"unknown model {spec!r}: not a registry alias ({known}), a hub id owner/name"
                                 "[@revision] or a local folder")
    return Source(spec, match["repo"], match["revision"] or "main", DEFAULT_FILES)


def locate(spec: str, *, offline: bool = False, on_notice: Notice | None = None,
           parts: dict[str, str] | None = None) -> ModelSource:
    """Resolve `spec` (see the module docstring) without downloading, except a hub id outside the registry. `parts`
    names, by role, a model that provides one of the family's companion parts (a Kandinsky decoder's "prior"):
    an alias, folder or hub id, located the same way.

    Raises `ModelNotFoundError` (exit code 2) for a spec that is no alias, folder or hub id, a folder that is no model
    or of an unknown family, and for an image-encoder alias, which is no model to run by itself; `UsageError` for a
    part the family has no use for or that the named model does not hold."""
    source = _locate(spec, offline, on_notice)
    for role, other_spec in (parts or {}).items():
        family = source.family
        if role not in family.companions:
            raise UsageError(f"{source.name} is a {family.title} model, which takes no {role} of another model")
        other = _locate(other_spec, offline, on_notice)
        if other.family is not family or role not in other.parts:
            raise UsageError(f"{other_spec} holds no {family.title} {role} for {source.name}")
        # The part and what comes with it (a prior repo's image encoder), never the other model itself.
        taken = {r: part for r, part in other.parts.items() if r != family.roles[0]}
        source = replace(source, parts={**source.parts, **taken}, folders={})
    return source


def _locate(spec: str, offline: bool, on_notice: Notice | None) -> ModelSource:
    registry = load_registry()
    entry = registry.get(spec)
    if entry is not None:
        if entry.kind == "image_encoder":
            users = [alias for alias, e in registry.items() if e.image_encoder == spec]
            raise ModelNotFoundError(f"{spec} is the image encoder of {', '.join(users) or 'no model'}, not a model "
                                     "to run by itself")
        return _entry_source(entry, registry, offline)
    path = Path(spec).expanduser()
    if path.is_dir():
        known = _registry_folder(path, registry)
        if known is not None:
            source = _entry_source(known, registry, offline)
            role = source.family.roles[0]
            return replace(source, parts={**source.parts, role: Part(path, source.parts[role].source)})
        family, role, defaults, preset = folder_settings(path)
        return ModelSource(path.resolve().name, family, defaults, defaults.updated(preset, "fast"),
                           {role: Part(folder=path)}, offline)
    source = _hub_source(spec, registry)
    folder = fetch(source, offline=offline, on_notice=on_notice, why=" on first use")
    family, role, defaults, preset = folder_settings(folder)
    return ModelSource(spec, family, defaults, defaults.updated(preset, "fast"), {role: Part(folder, source)},
                       offline)


def pull(spec: str, *, offline: bool = False, on_notice: Notice | None = None) -> list[tuple[Path, bool]]:
    """Download `spec` ahead of use: a registry entry with every part its operations use (an image-encoder alias
    too), or a hub repo's configs, tokenizer files and safetensors. Returns each part's folder, and whether it comes
    from the hub (a local folder is returned as it is). With `offline`, nothing is fetched: it checks that
    everything is downloaded. Raises as `locate` does, and `DownloadError`."""
    registry = load_registry()
    entry = registry.get(spec)
    if entry is not None:
        source = _entry_source(entry, registry, offline)
        return [(folder, source.parts[role].source is not None) for role, folder in source.fetch_all(on_notice).items()]
    path = Path(spec).expanduser()
    if path.is_dir():
        return [(path, False)]
    return [(fetch(_hub_source(spec, registry), offline=offline, on_notice=on_notice), True)]
