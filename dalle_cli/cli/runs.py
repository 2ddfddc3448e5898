"""What a CLI run does between parsing and printing: check every job, then make them batch by batch, writing each
image as soon as its batch returns, so an interrupted run loses at most the batch in flight.

A run goes over its items twice, streaming both times. The first pass checks every job (settings, seeds, file names,
models) and counts what is left to make, before any model loads or any file is written; the second makes the images.

**Resuming.** Each run keeps a manifest in the output folder, `.dalle/run-KEY.json`, where KEY is a digest of what
decides the run's images: the command, its inputs (prompts, the prompt file's bytes, the pictures' bytes), the
model, the settings, counts, seed and name template. It holds the base seed the run drew when no `--seed` was given,
and whether the run finished. Running the same command again after an interruption finds the unfinished manifest and
resumes: the same seed, and every image whose file is whole is kept as it is. With `--skip-existing` a finished
run's seed is reused too, so repeating the command makes nothing twice. A file that is there but damaged (cut short
by a kill) is renamed NAME.damaged and its image made again.
"""

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol

from PIL import Image

from .. import __version__, load
from ..api import ModelInfo, ProgressCallback
from ..devices import resolve_device
from ..errors import UsageError
from ..images import load_image
from ..settings import Settings
from ..sources import ModelSource, locate
from .batch import Item, Job, Planner, batches
from .outputs import (contact_sheet, grid_columns, looks_complete, name_limit, put_aside, read_record,
                      remove_leftovers, write_png)

MANIFESTS = ".dalle"


@dataclass
class Tally:
    """A run's images: how many were `written` and `skipped`, and (for the contact sheet, when asked for) the path of
    each image by its index."""

    written: int = 0
    skipped: int = 0
    paths: dict[int, Path] | None = None

    def add(self, job: Job, path: Path, made: bool) -> None:
        if made:
            self.written += 1
        else:
            self.skipped += 1
        if self.paths is not None:
            self.paths[job.index] = path


class Observer(Protocol):
    """What a run reports while it makes images."""

    def batch(self, jobs: list[Job]) -> ProgressCallback:
        """A batch starts; returns the engine's progress callback for it."""

    def image(self, entry: dict[str, Any]) -> None:
        """An image was written; `entry` is its record with its path."""

    def finished(self, jobs: list[Job]) -> None:
        """A batch's images are all written."""


class Reporter(Protocol):
    """How a run talks to the user (the CLI's display)."""

    def note(self, message: str) -> None:
        """A message for people."""

    def warn(self, message: str) -> None:
        """A warning for people."""

    def progress(self, images: int, steps: int) -> ContextManager[Observer]:
        """An observer of the making of `images` images in `steps` progress events in all."""


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks: recorded with variations so the source can be matched later."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record(job: Job, info: ModelInfo, stages: tuple[str, ...], seconds: float,
           digest: str | None = None) -> dict[str, Any]:
    """The reproduction record of one image (printed with --json and stored in the PNG): what it was made from,
    its seed, the model (name, repo id, revision or folder, further parts) and the settings its operation's `stages`
    read (the inversion's only for a variation at η), and the seconds it took (its share of its batch)."""
    if job.prompt is not None:
        made_from: dict[str, Any] = {"prompt": job.prompt}
    else:
        made_from = {"source": str(job.source), "source_sha256": digest}
    where = {"repo_id": info.repo_id, "revision": info.revision} if info.repo_id else {"model_path": info.path}
    inverting = getattr(job.settings, "eta", None) is not None
    return {**made_from, "seed": job.seed, "index": job.index, "model": info.name, **where, **info.extras,
            "settings": job.settings.used(job.operation, stages, inverting=inverting), "seconds": round(seconds, 3),
            "dalle": __version__}


class Models:
    """The models of a run: the spec of each item's model (the command's `--model`, else the one its record names,
    else `default`) with its companion parts (the command's, or the record's), each located once, the run's
    settings for it (the settings `given` over the model's defaults, or over its fast preset with `fast`), and one
    model loaded at a time."""

    def __init__(self, explicit: str | None, default: str, given: dict[str, Any], offline: bool,
                 load_options: dict[str, Any], notice: Callable[[str], None], check: Callable[..., Settings],
                 parts: dict[str, str] | None = None, fast: bool = False) -> None:
        self.explicit, self.default, self.given, self.offline, self.fast = explicit, default, given, offline, fast
        self.parts = parts or {}
        self.load_options, self.notice, self.check = load_options, notice, check
        self.sources: dict[str, ModelSource] = {}
        self.bases: dict[tuple[str, str], Settings] = {}
        self.loaded: tuple[str, Any] | None = None

    def of(self, item: Item) -> tuple[str, ModelSource]:
        """The key of an item's model (its spec, and its parts) and the model's source."""
        spec, parts = ((item.model, dict(item.parts)) if item.model is not None and self.explicit is None
                       else (self.explicit or self.default, self.parts))
        key = spec + "".join(f" --{role} {other}" for role, other in sorted(parts.items()))
        if key not in self.sources:
            self.sources[key] = locate(spec, offline=self.offline, on_notice=self.notice, parts=parts)
        return key, self.sources[key]

    def base(self, spec: str, operation: str) -> Settings:
        key = (spec, operation)
        if key not in self.bases:
            source = self.sources[spec]
            base = source.fast if self.fast else source.defaults
            self.bases[key] = self.check(source, operation, base, self.given, "options")
        return self.bases[key]

    def model(self, spec: str, single: bool = False) -> Any:
        """The loaded model of `spec`; loading another frees the one before (a run rarely switches models). For a
        `single` batch on the CPU the model runs in low-memory mode (each stage's weights read when it starts and
        freed when the next one does), which reads every weight once, as loading it whole does, and holds one
        stage's at a time; not when compiling, whose networks stay loaded."""
        if self.loaded is None or self.loaded[0] != spec:
            self.loaded = None
            options = dict(self.load_options)
            if (single and not options["low_vram"] and not options["compile"]
                    and resolve_device(options["device"]).type == "cpu"):
                options["low_memory"] = True
            self.loaded = (spec, load(self.sources[spec], **options, on_notice=self.notice))
        return self.loaded[1]


@dataclass
class Manifest:
    """What a run keeps in its output folder to be resumed: its key, base seed and whether it finished."""

    path: Path
    seed: int
    finished: bool = False
    images: int = 0

    @staticmethod
    def find(out: Path, key: str) -> "Manifest | None":
        path = out / MANIFESTS / f"run-{key[:24]}.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Manifest(path, int(raw["seed"]), bool(raw["finished"]), int(raw.get("images", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: the run starts afresh

    def save(self, command: dict[str, Any]) -> None:
        """Write the manifest atomically (a temporary file renamed over it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = {"seed": self.seed, "finished": self.finished, "images": self.images, "command": command,
                "dalle": __version__}
        temporary.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)


@dataclass
class Request:
    """One image-making command: its `items()` (called once per pass), what identifies it (`identity`, hashed into
    the run key), where and how to write, and the run's models."""

    items: Callable[[], Iterable[Item]]
    identity: dict[str, Any]
    models: Models
    out: Path
    template: str
    num: int
    seed: int | None
    batch_size: int
    skip_existing: bool = False
    grid: bool = False
    digests: dict[Path, str] = field(default_factory=dict)


def run_key(identity: dict[str, Any]) -> str:
    """The digest that names a run's manifest."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Plan:
    """What the checking pass found: the images to make, the progress events of making them, and the batches."""

    todo: int = 0
    events: int = 0
    batches: int = 0


def _check(request: Request, planner: Planner, skip: bool, tally: Tally) -> Plan:
    """Go over every job once without making anything: every value is checked and every name is rendered, so a bad
    line or name stops the run before any model loads. Counts the images to make and their progress events, and
    enters the images it skips (their files are whole) in `tally`."""
    plan, limit, names = Plan(), name_limit(request.out), set()
    unique = "{index" in request.template  # names hold the index: unique by construction, no need to keep them

    def todo() -> Iterator[Job]:
        for job in planner.jobs(request.items()):
            size = len(os.fsencode(job.name))
            if size > limit:
                raise UsageError(f"--name gives image {job.index} the file name {job.name[:40]!r}... of {size} bytes; "
                                 f"this folder allows {limit} (its limit less room for dalle's temporary file)")
            if not unique:
                if job.name in names:
                    raise UsageError(f"--name gives two images the same file name {job.name}: add {{index}} to "
                                     "the template")
                names.add(job.name)
            if skip and looks_complete(request.out / job.name):
                tally.add(job, request.out / job.name, made=False)
            else:
                yield job

    for batch in batches(todo(), request.batch_size):
        plan.todo += len(batch)
        plan.batches += 1
        family = request.models.sources[batch[0].model].family
        plan.events += family.events(batch[0].operation, batch[0].settings)
    return plan


def execute(request: Request, reporter: Reporter, tally: Tally) -> None:
    """Check, then make and write the images of `request` (see the module docstring), and the contact sheet."""
    key = run_key(request.identity)
    manifest = Manifest.find(request.out, key)
    resuming = manifest is not None and not manifest.finished
    reuse = request.seed is None and manifest is not None and (resuming or request.skip_existing)
    seed = request.seed if request.seed is not None else manifest.seed if reuse else secrets.randbelow(2**31)
    skip = request.skip_existing or resuming
    seed_option = "--seed" if request.seed is not None else "the base seed"
    planner = Planner(request.template, request.num, seed, request.models.of, request.models.base, seed_option)
    tally.paths = {} if request.grid else None
    plan = _check(request, planner, skip, tally)
    if planner.base_seeded and request.seed is None:
        how = "the interrupted run's" if resuming else "the last run's" if reuse else "random"
        reporter.note(f"seed {seed} ({how}; --seed {seed} makes the same images again)")
    if resuming:
        reporter.note(f"resuming an interrupted run in {request.out}: {tally.skipped} of {tally.skipped + plan.todo} "
                      "images are already made")
    elif tally.skipped:
        reporter.note(f"skipping {tally.skipped} image{'s' * (tally.skipped != 1)} whose files exist")
    manifest = manifest or Manifest(request.out / MANIFESTS / f"run-{key[:24]}.json", seed)
    manifest.seed, manifest.images, manifest.finished = seed, plan.todo + tally.skipped, False
    if plan.todo:
        _make(request, planner, skip, plan, manifest, reporter, tally)
    if manifest.path.parent.parent.is_dir():
        manifest.finished = True
        manifest.save(request.identity)
    if request.grid and tally.paths:
        per_item = planner.counts.pop() if len(planner.counts) == 1 else 1
        reporter.note(f"contact sheet: {write_grid(tally.paths, request.out, per_item, key)}")
    skipped = f" ({tally.skipped} skipped)" if tally.skipped else ""
    reporter.note(f"{tally.written} image{'s' * (tally.written != 1)} written to {request.out}{skipped}")


def _make(request: Request, planner: Planner, skip: bool, plan: Plan, manifest: Manifest, reporter: Reporter,
          tally: Tally) -> None:
    """The making pass: load each batch's model, make the batch, write its images."""
    warned: set[str] = set()
    started = False

    def jobs() -> Iterator[Job]:
        for job in planner.jobs(request.items()):
            target = request.out / job.name
            if skip and looks_complete(target):  # entered in the tally by the checking pass
                continue
            if skip and target.exists():
                reporter.warn(f"{target} is damaged (not a whole PNG): kept as {put_aside(target)}, made again")
            yield job

    with reporter.progress(plan.todo, plan.events) as observer:
        for batch in batches(jobs(), request.batch_size):
            model = request.models.model(batch[0].model, single=plan.batches == 1)
            model.prepare(batch[0].operation)
            if not started:  # the output folder is made only once a model is ready to make something
                request.out.mkdir(parents=True, exist_ok=True)
                removed = remove_leftovers(request.out)
                if removed:
                    reporter.note(f"removed {removed} temporary file{'s' * (removed != 1)} left by killed runs")
                manifest.save(request.identity)
                started = True
            for text in dict.fromkeys(job.prompt for job in batch if job.prompt is not None):
                cut = model.prompt_overflow(text)
                if cut and text not in warned:
                    warned.add(text)
                    start = text if len(text) <= 40 else text[:40] + "..."
                    reporter.warn(f"prompt {start!r} is longer than {model.max_tokens} tokens; this part is cut: "
                                  f"{cut!r}")
            _make_batch(request, model, batch, observer, tally)


def _make_batch(request: Request, model: Any, batch: list[Job], observer: Observer, tally: Tally) -> None:
    progress = observer.batch(batch)
    first = batch[0]
    start = time.perf_counter()
    if first.operation == "generate":
        images = model.generate([job.prompt for job in batch], [job.seed for job in batch], first.settings,
                                progress=progress)
    else:
        pictures = [load_image(job.source) for job in batch]  # decoded batch by batch, never all at once
        images = model.vary(pictures, [job.seed for job in batch], first.settings, progress=progress)
    seconds = (time.perf_counter() - start) / len(batch)
    stages = model.family.operations[first.operation]
    for job, image in zip(batch, images, strict=True):
        digest = (request.digests.get(job.source) or file_digest(job.source)) if job.source else None
        entry = record(job, model.info, stages, seconds, digest)
        path = write_png(image, request.out / job.name, entry)
        tally.add(job, path, made=True)
        observer.image({**entry, "path": str(path)})
    observer.finished(batch)


def write_grid(paths: dict[int, Path], out: Path, per_item: int, key: str) -> Path:
    """A contact sheet of every image of the run, made or skipped, in order, as grid.png in `out`. A resumed run
    replaces its own sheet; a sheet of another run is kept, and this one is grid-1.png (or -2, ...)."""
    ordered = [path for _, path in sorted(paths.items())]
    images = []
    for path in ordered:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    sheet = contact_sheet(images, grid_columns(len(images), per_item))
    target = out / "grid.png"
    try:
        own = read_record(target).get("run") == key[:24]
    except UsageError:
        own = False
    return write_png(sheet, target, {"grid": [str(p) for p in ordered], "run": key[:24], "dalle": __version__},
                     replace=own)
