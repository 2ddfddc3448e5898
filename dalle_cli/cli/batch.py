"""What a run makes: its items (prompts, pictures to vary), read from arguments and prompt files as streams, and the
jobs they give, one per image. No torch here.

A prompt file is UTF-8 text, one prompt per line; blank lines and lines starting with `#` are skipped. A line that
starts with `{` is a JSON object: `prompt` plus optional `seed`, `n` and the model family's sampling settings
(`prior_steps`, ..., also accepted nested under `settings`) for that prompt only. The record of any image dalle made
is such a line and makes its image again: a record's `model` (with its `repo_id` and `revision`, or `model_path`)
names the model unless the command names one, a variation's record (`source`, `source_sha256`) varies its source
again, and a contact sheet's record (`grid`) stands for the records of the images it shows.

Files are read line by line, and items and jobs are generated as they are needed, so a run's memory does not grow
with its prompt file. Every limit is the same wherever a value is given: seeds 0 .. 2**63 - 1, counts 1 .. 10,000.
"""

import codecs
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from ..errors import UsageError
from ..families import FAMILIES
from ..registry import Entry, is_int_in, load_registry, registry_path
from ..settings import Knob, Settings, check_value
from .limits import MAX_COUNT, MAX_SEED

if TYPE_CHECKING:
    from ..sources import ModelSource
from .naming import render_name, slugify

MANIPULATIONS = {"interpolate": "interp", "text_diff": "diff", "edit": "edit"}  # record key -> the command
RECORD_KEYS = ("path", "index", "model", "repo_id", "revision", "model_path", "seconds", "dalle")


def known_settings() -> dict[str, Knob]:
    """Every family's settings: a prompt line may set any of them (its values are checked when the line is read),
    and the model then decides which it has."""
    return {name: knob for family in FAMILIES.values() for name, knob in family.settings.knobs().items()}


@dataclass(frozen=True)
class Prompt:
    """A prompt to make images of, with its own overrides; `where` names its origin for messages ("prompts.txt:3",
    "argument 1"); `model` is the model its record names (None: the run's), with the companion `parts` (a
    Kandinsky decoder's prior) the record names, as (role, spec) pairs."""

    text: str
    where: str
    seed: int | None = None
    n: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    parts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Picture:
    """A picture to make variations of; `digest` is the sha256 its record says it had (None for a new input)."""

    path: Path
    where: str
    seed: int | None = None
    n: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    parts: tuple[tuple[str, str], ...] = ()
    digest: str | None = None


Item = Prompt | Picture


class Job(NamedTuple):
    """One image to make: its position `index` in the run, what it is made from (a prompt or a source picture),
    which item it belongs to (`item`) and its number `i` within it, its seed, settings and file name, the model
    spec that makes it and the operation ("generate" or "vary"). A tuple, since a run makes a million of them."""

    index: int
    item: int
    i: int
    seed: int
    settings: Settings
    name: str
    model: str
    operation: str
    prompt: str | None = None
    source: Path | None = None

    @property
    def batch_key(self) -> tuple[str, str, Settings]:
        """Jobs with the same key can be made in one engine call."""
        return self.model, self.operation, self.settings


def check_seed(seed: Any, where: str) -> int:
    """`seed` if it is an integer from 0 to 2**63 - 1, else `UsageError`."""
    if not is_int_in(seed, 0, MAX_SEED):
        raise UsageError(f"{where}: seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_count(n: Any, where: str) -> int:
    """`n` if it is an integer from 1 to 10000, else `UsageError`."""
    if not is_int_in(n, 1, MAX_COUNT):
        raise UsageError(f"{where}: n must be an integer from 1 to {MAX_COUNT}, got {n!r}")
    return n


@functools.lru_cache(maxsize=4)
def _registry(path: Path) -> dict[str, Entry]:
    return load_registry(path)


def record_model(raw: dict[str, Any]) -> str | None:
    """The model spec a record names: its registry alias (while the registry pins the revision it was made with),
    else its hub repo at its revision, else its folder."""
    name = raw.get("model")
    entry = _registry(registry_path()).get(name) if isinstance(name, str) else None
    if entry is not None:
        first = next(iter(entry.repos.values()), None)
        if first is None or raw.get("revision") in (None, first.revision):
            return name
    if isinstance(raw.get("repo_id"), str) and isinstance(raw.get("revision"), str):
        return f"{raw['repo_id']}@{raw['revision']}"
    if isinstance(raw.get("model_path"), str):
        return raw["model_path"]
    return name if isinstance(name, str) else None


def _json_items(line: str, where: str) -> Iterator[Item]:
    try:
        raw = json.loads(line)
    except ValueError as e:
        raise UsageError(f"{where}: invalid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a line starting with '{{' must be a JSON object")
    if "grid" in raw:
        yield from _grid_items(raw, where)
        return
    made_by = next((command for key, command in MANIPULATIONS.items() if key in raw), None)
    if made_by is not None:
        again = raw.get("again") if isinstance(raw.get("again"), str) else f"dalle {made_by} with its inputs"
        raise UsageError(f"{where}: the record of a `dalle {made_by}` frame; its command makes it again: {again}")
    knobs = known_settings()
    roles = {role for family in FAMILIES.values() for role in family.roles}  # a record's further parts
    unknown = sorted(set(raw) - {"prompt", "source", "source_sha256", "seed", "n", "settings", *knobs, *RECORD_KEYS,
                                 *roles})
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (use prompt, seed, n, {', '.join(knobs)})")
    nested = raw.get("settings", {})
    if not isinstance(nested, dict):
        raise UsageError(f"{where}: 'settings' must be a JSON object")
    settings = {**nested, **{k: raw[k] for k in knobs if k in raw}}
    strange = sorted(set(settings) - set(knobs))
    if strange:
        raise UsageError(f"{where}: unknown setting {strange[0]!r} (known: {', '.join(knobs)})")
    settings = {key: check_value(key, knobs[key], value, where) for key, value in settings.items()}
    seed = check_seed(raw["seed"], where) if "seed" in raw else None
    n = check_count(raw["n"], where) if "n" in raw else None
    model = record_model(raw)
    # A record of a registry model names its parts through the registry; others name them in the record itself.
    companions = (role for family in FAMILIES.values() for role in family.companions)
    parts = () if model is None or model == raw.get("model") else tuple(
        (role, raw[role]) for role in companions if isinstance(raw.get(role), str))
    if "source" in raw and "prompt" not in raw:
        if not isinstance(raw["source"], str) or not raw["source"]:
            raise UsageError(f"{where}: 'source' must be the path of a picture")
        yield Picture(Path(raw["source"]), where, seed, n, settings, model, parts, raw.get("source_sha256"))
        return
    text = raw.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: 'prompt' must be a non-empty string")
    yield Prompt(text.strip(), where, seed, n, settings, model, parts)


def _grid_items(raw: dict[str, Any], where: str) -> Iterator[Item]:
    """A contact sheet's record: the images it shows, each made again from its own record."""
    paths = raw["grid"]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UsageError(f"{where}: 'grid' must list the paths of the images of a contact sheet")
    from .outputs import read_record

    for k, path in enumerate(paths):
        record = read_record(Path(path))  # UsageError naming the file when it is gone or not dalle's
        yield from _json_items(json.dumps(record), f"{where} (image {k + 1} of its grid, {path})")


def parse_prompts(lines: Iterable[str], name: str) -> Iterator[Item]:
    """The items of a prompt file's lines, one by one; `name` is used in messages. Raises `UsageError` with the line
    number for an invalid JSON line, and at the end for a file without any prompt."""
    found = False
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{number}"
        found = True
        if line.startswith("{"):
            yield from _json_items(line, where)
        else:
            yield Prompt(line, where)
    if not found:
        raise UsageError(f"{name} holds no prompts (blank lines and # comments are skipped)")


def _decoded(path: Path, name: str) -> Iterator[str]:
    """The lines of a UTF-8 file (a leading byte-order mark dropped), read one at a time."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    yield (raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw).decode("utf-8")
                except UnicodeDecodeError:
                    raise UsageError(f"{name}:{number}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read the prompt file {name}: {e.strerror or e}") from None


def read_prompt_file(path: Path, name: str) -> Iterator[Item]:
    """The items of the prompt file at `path` (called `name` in messages), read as they are needed."""
    return parse_prompts(_decoded(path, name), name)


def argument_prompts(arguments: list[str]) -> list[Prompt]:
    """Prompts given on the command line; an empty one is a `UsageError`."""
    for number, text in enumerate(arguments, start=1):
        if not text.strip():
            raise UsageError(f"prompt {number} is empty")
    return [Prompt(text.strip(), f"argument {number}") for number, text in enumerate(arguments, start=1)]


def chosen(source: "ModelSource", operation: str, base: Settings, given: dict[str, Any], where: str,
           name: Callable[[str], str] = str) -> Settings:
    """`base` with the settings `given` for `operation` on the model `source`. Raises `UsageError`, its message
    starting with `where`, for a setting the model's family does not have or that the operation does not read, and
    for a bad value; `name(setting)` is how the message names a setting (the CLI passes its option names)."""
    family = source.family
    if operation not in family.operations:
        raise UsageError(f"{where}: {source.name} cannot {operation} ({family.title} models can "
                         f"{', '.join(family.operations)})")
    for key in given:
        if key not in family.settings.knobs() or not family.applies(key, operation):
            known = ", ".join(name(k) for k in family.settings.knobs() if family.applies(k, operation))
            raise UsageError(f"{where}: {name(key)} is not a setting of {source.name} for {operation} "
                             f"({family.title} models have {known})")
    return base.updated(given, where)


@dataclass
class Planner:
    """Turns items into jobs. `model(item)` gives the spec and the source of an item's model, `base(spec, operation)`
    the run's settings for it; image i of an item gets the item's seed (else `seed`, where `seed_option` says how
    the user gave it) + i; names come from `template`. `base_seeded` becomes True once a job used `seed`, and
    `counts` collects the number of images of each item."""

    template: str
    num: int
    seed: int
    model: Callable[[Item], tuple[str, "ModelSource"]]
    base: Callable[[str, str], Settings]
    seed_option: str = "--seed"
    base_seeded: bool = False
    counts: set[int] = field(default_factory=set)

    def jobs(self, items: Iterable[Item]) -> Iterator[Job]:
        """Every image of `items`, in order, as they are needed."""
        index = 0
        settings_of: dict[tuple[str, str, str], Settings] = {}  # most lines share their settings: check them once
        slugs: dict[str, str] = {}
        for number, item in enumerate(items):
            spec, source = self.model(item)
            operation = "generate" if isinstance(item, Prompt) else "vary"
            key = (spec, operation, json.dumps(item.settings, sort_keys=True) if item.settings else "")
            if key not in settings_of:
                if len(settings_of) > 1024:
                    settings_of.clear()
                settings_of[key] = chosen(source, operation, self.base(spec, operation), item.settings, item.where)
            settings = settings_of[key]
            n = item.n or self.num
            self.counts.add(n)
            first = item.seed if item.seed is not None else self.seed
            self.base_seeded |= item.seed is None
            if first + n - 1 > MAX_SEED:
                given = f"seed {first}" if item.seed is not None else f"{self.seed_option} {first}"
                raise UsageError(f"{item.where}: {given} with {n} images needs seeds up to {first + n - 1}, past the "
                                 f"largest seed, {MAX_SEED}")
            if spec not in slugs:
                slugs[spec] = slugify(source.name)
            prompt, path = (item.text, None) if isinstance(item, Prompt) else (None, item.path)
            slug = slugify(prompt if prompt is not None else path.stem)
            for i in range(n):
                name = render_name(self.template, index=index, item=number, i=i, seed=first + i, slug=slug,
                                   model=slugs[spec])
                yield Job(index, number, i, first + i, settings, name, spec, operation, prompt, path)
                index += 1


def batches(jobs: Iterable[Job], size: int, open_groups: int = 64) -> Iterator[list[Job]]:
    """Jobs in batches of at most `size` that share their model, operation and settings (one engine call each),
    in the run's order within a key. Jobs wait in at most `open_groups` partial batches, so memory stays bounded
    however long the run; the oldest partial batch goes first when one more is needed."""
    pending: dict[tuple[str, str, Settings], list[Job]] = {}
    for job in jobs:
        group = pending.setdefault(job.batch_key, [])
        group.append(job)
        if len(group) == size:
            yield pending.pop(job.batch_key)
        elif len(pending) > open_groups:
            yield pending.pop(next(iter(pending)))
    yield from pending.values()
