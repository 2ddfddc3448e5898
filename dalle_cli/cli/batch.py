"""Prompt files and the list of images a run makes.

A prompt file is UTF-8 text, one prompt per line; blank lines and lines starting with `#` are skipped. A line that
starts with `{` is a JSON object: `prompt` plus optional `seed`, `n` and the model family's sampling settings
(`prior_steps`, ..., also accepted nested under `settings`) for that prompt only. The keys of an output record (`path`, `model`, ...) are
accepted and ignored, so a line of `dalle gen --json` output, or the record inside a PNG, makes its image again.
No torch here.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..families import FAMILIES
from ..registry import is_int_in
from ..settings import Knob, Settings, check_value
from ..sources import ModelSource
from .naming import render_name, slugify

MAX_SEED = 2**63 - 1
RECORD_KEYS = ("path", "index", "model", "repo_id", "revision", "seconds", "dalle")


def known_settings() -> dict[str, Knob]:
    """Every family's settings: a prompt line may set any of them (its values are checked when the line is read),
    and the model then decides which it has."""
    return {name: knob for family in FAMILIES.values() for name, knob in family.settings.knobs().items()}


@dataclass(frozen=True)
class Prompt:
    """One prompt and its own overrides; `where` names its origin for messages ("prompts.txt:3", "argument 1")."""

    text: str
    where: str
    seed: int | None = None
    n: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One image to make: its position `index` in the run, what it is made from (a prompt or a source image),
    which prompt or input it belongs to (`item`) and its number `i` within it, its seed, settings and file name."""

    index: int
    item: int
    i: int
    seed: int
    settings: Settings
    name: str
    prompt: str | None = None
    source: Path | None = None


def check_seed(seed: int, where: str) -> int:
    """`seed` if it is an integer from 0 to 2**63 - 1, else `UsageError`."""
    if not is_int_in(seed, 0, MAX_SEED):
        raise UsageError(f"{where}: seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_count(n: int, where: str) -> int:
    """`n` if it is an integer from 1 to 10000, else `UsageError`."""
    if not is_int_in(n, 1, 10000):
        raise UsageError(f"{where}: n must be an integer from 1 to 10000, got {n!r}")
    return n


def _json_prompt(line: str, where: str) -> Prompt:
    try:
        raw = json.loads(line)
    except ValueError as e:
        raise UsageError(f"{where}: invalid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a line starting with '{{' must be a JSON object")
    knobs = known_settings()
    roles = {role for family in FAMILIES.values() for role in family.roles}  # a record's further parts
    unknown = sorted(set(raw) - {"prompt", "seed", "n", "settings", *knobs, *RECORD_KEYS, *roles})
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (use prompt, seed, n, {', '.join(knobs)})")
    text = raw.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: 'prompt' must be a non-empty string")
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
    return Prompt(text.strip(), where, seed, n, settings)


def parse_prompts(text: str, name: str) -> list[Prompt]:
    """The prompts of a prompt file's `text`; `name` is used in messages. Raises `UsageError` with the line number
    for an invalid JSON line, and for a file without any prompt."""
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{number}"
        prompts.append(_json_prompt(line, where) if line.startswith("{") else Prompt(line, where))
    if not prompts:
        raise UsageError(f"{name} holds no prompts (blank lines and # comments are skipped)")
    return prompts


def read_prompt_file(path: str, stdin: bytes | None = None) -> list[Prompt]:
    """The prompts of the file at `path`, or of `stdin` when `path` is "-". Raises `UsageError` for a missing,
    unreadable or non-UTF-8 file."""
    name = "stdin" if path == "-" else path
    try:
        data = stdin if path == "-" and stdin is not None else Path(path).read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as e:
        raise UsageError(f"cannot read the prompt file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"{name}:{line}: not UTF-8 text") from None
    return parse_prompts(text, name)


def argument_prompts(arguments: list[str]) -> list[Prompt]:
    """Prompts given on the command line; an empty one is a `UsageError`."""
    for number, text in enumerate(arguments, start=1):
        if not text.strip():
            raise UsageError(f"prompt {number} is empty")
    return [Prompt(text.strip(), f"argument {number}") for number, text in enumerate(arguments, start=1)]


def chosen(source: ModelSource, operation: str, base: Settings, given: dict[str, Any], where: str,
           name: Any = str) -> Settings:
    """`base` with the settings `given` for `operation` on the model `source`. Raises `UsageError`, its message
    starting with `where`, for a setting the model's family does not have or that the operation does not read, and
    for a bad value; `name(setting)` is how the message names a setting (the CLI passes its option names)."""
    family = source.family
    for key in given:
        if key not in family.settings.knobs() or not family.applies(key, operation):
            known = ", ".join(name(k) for k in family.settings.knobs() if family.applies(k, operation))
            raise UsageError(f"{where}: {name(key)} is not a setting of {source.name} for {operation} "
                             f"({family.title} models have {known})")
    return base.updated(given, where)


def plan_prompts(prompts: list[Prompt], base: Settings, seed: int, n: int, template: str,
                 source: ModelSource) -> list[Job]:
    """Every image of a text-to-image run, in order: image i of a prompt gets seed + i, where the prompt's own seed,
    count and settings override the run's."""
    jobs: list[Job] = []
    for item, prompt in enumerate(prompts):
        settings = chosen(source, "generate", base, prompt.settings, prompt.where)
        first = prompt.seed if prompt.seed is not None else seed
        for i in range(prompt.n or n):
            numbers = dict(index=len(jobs), item=item, i=i, seed=check_seed(first + i, prompt.where))
            name = render_name(template, slug=slugify(prompt.text), model=slugify(source.name), **numbers)
            jobs.append(Job(**numbers, settings=settings, name=name, prompt=prompt.text))
    return _unique(jobs)


def plan_sources(sources: list[Path], base: Settings, seed: int, n: int, template: str,
                 source: ModelSource) -> list[Job]:
    """Every image of a variations run: n variations of each source, image i of a source with seed + i."""
    jobs: list[Job] = []
    for item, path in enumerate(sources):
        for i in range(n):
            numbers = dict(index=len(jobs), item=item, i=i, seed=check_seed(seed + i, "--seed"))
            name = render_name(template, slug=slugify(path.stem), model=slugify(source.name), **numbers)
            jobs.append(Job(**numbers, settings=base, name=name, source=path))
    return _unique(jobs)


def _unique(jobs: list[Job]) -> list[Job]:
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name in seen:
            raise UsageError(f"--name gives images {seen[job.name].index} and {job.index} the same file name "
                             f"{job.name}: add {{index}} to the template")
        seen[job.name] = job
    return jobs


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs in batches of at most `size` that share their settings (one engine call each), in the run's order."""
    groups: dict[Settings, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.settings, []).append(job)
    return [group[k:k + size] for group in groups.values() for k in range(0, len(group), size)]
