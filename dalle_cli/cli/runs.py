"""What a CLI run does between parsing and printing: make the planned images batch by batch, write each as soon as
its batch returns, and describe the system and the known models for `dalle info` and `dalle models`.

Writing per batch means an interrupted run loses at most the batch in flight, and `--skip-existing` resumes it.
"""

import hashlib
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

from PIL import Image

from .. import __version__, load
from ..api import ModelInfo, ProgressCallback
from ..sources import ModelSource
from .batch import Job, batches
from .outputs import contact_sheet, grid_columns, write_png


@dataclass
class Tally:
    """Images of a run by their index: `written` (the path each got) and `skipped` (files that already existed)."""

    written: dict[int, Path] = field(default_factory=dict)
    skipped: dict[int, Path] = field(default_factory=dict)


class Observer(Protocol):
    """What a run reports while it makes images."""

    def batch(self, jobs: list[Job]) -> ProgressCallback:
        """A batch starts; returns the engine's progress callback for it."""

    def image(self, entry: dict[str, Any]) -> None:
        """An image was written; `entry` is its record with its path."""

    def finished(self, jobs: list[Job]) -> None:
        """A batch's images are all written."""


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, recorded with variations so the source can be matched later."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(job: Job, info: ModelInfo, stages: tuple[str, ...], seconds: float,
           digest: str | None = None) -> dict[str, Any]:
    """The reproduction record of one image (printed with --json and stored in the PNG): what it was made from,
    its seed, the model (name, repo id, revision, further parts) and the settings its operation's `stages` read, and
    the seconds it took (its share of its batch)."""
    if job.prompt is not None:
        made_from: dict[str, Any] = {"prompt": job.prompt}
    else:
        made_from = {"source": str(job.source), "source_sha256": digest}
    return {**made_from, "seed": job.seed, "index": job.index, "model": info.name, "repo_id": info.repo_id,
            "revision": info.revision, **info.extras, "settings": job.settings.used(stages),
            "seconds": round(seconds, 3), "dalle": __version__}


def make_images(make: Callable[[list[Job], ProgressCallback], list[Image.Image]], jobs: list[Job], out: Path,
                batch_size: int, info: Callable[[], ModelInfo], stages: tuple[str, ...], digests: dict[Path, str],
                tally: Tally, observer: Observer) -> None:
    """Make `jobs` in batches with `make(batch, progress)`, writing each image to `out` as soon as its batch returns
    and entering it in `tally`, so an interruption loses at most the batch in flight."""
    for batch in batches(jobs, batch_size):
        progress = observer.batch(batch)
        start = time.perf_counter()
        images = make(batch, progress)
        seconds = (time.perf_counter() - start) / len(batch)
        for job, image in zip(batch, images, strict=True):
            entry = record(job, info(), stages, seconds, digests.get(job.source) if job.source else None)
            tally.written[job.index] = write_png(image, out / job.name, entry)
            observer.image({**entry, "path": str(tally.written[job.index])})
        observer.finished(batch)


def write_grid(tally: Tally, out: Path, per_item: int) -> Path:
    """A contact sheet of every image of the run, made or skipped, in order, written as grid.png (or grid-1.png, ...)
    in `out`."""
    paths = [path for _, path in sorted({**tally.skipped, **tally.written}.items())]
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    sheet = contact_sheet(images, grid_columns(len(images), per_item))
    return write_png(sheet, out / "grid.png", {"grid": [str(p) for p in paths], "dalle": __version__})


class Reporter(Protocol):
    """How a run talks to the user (the CLI's display)."""

    def note(self, message: str) -> None:
        """A message for people."""

    def warn(self, message: str) -> None:
        """A warning for people."""

    def progress(self, images: int, steps: int) -> ContextManager[Observer]:
        """An observer of the making of `images` images in `steps` sampler steps in all."""


@dataclass(frozen=True)
class Run:
    """What gen and vary share: the model `source` and the keyword arguments of `load`, the output folder, the batch
    size, whether to skip images whose files exist, and whether to write a contact sheet of `per_item` columns."""

    source: ModelSource
    load_options: dict[str, Any]
    out: Path
    batch_size: int
    skip_existing: bool = False
    grid: bool = False
    per_item: int = 1


def execute(run: Run, operation: str, jobs: list[Job],
            make: Callable[[Any, list[Job], ProgressCallback], list[Image.Image]], digests: dict[Path, str],
            tally: Tally, reporter: Reporter) -> None:
    """Make and write the images of `jobs` by `operation`: skip existing files when asked, load the model (only when
    something is left to make) with what the operation needs, warn about prompts cut to the model's token limit, then
    `make(model, batch, progress)` batch by batch, and write the contact sheet."""
    todo = []
    for job in jobs:
        if run.skip_existing and (run.out / job.name).exists():
            tally.skipped[job.index] = run.out / job.name
        else:
            todo.append(job)
    if tally.skipped:
        reporter.note(f"skipping {len(tally.skipped)} images whose files exist")
    if todo:
        model = load(run.source, **run.load_options, on_notice=reporter.note)
        model.prepare(operation)
        for text in dict.fromkeys(job.prompt for job in todo if job.prompt is not None):
            cut = model.prompt_overflow(text)
            if cut:
                start = text if len(text) <= 40 else text[:40] + "..."
                reporter.warn(f"prompt {start!r} is longer than {model.max_tokens} tokens; this part is cut: {cut!r}")
        family = run.source.family
        events = sum(family.events(operation, batch[0].settings) for batch in batches(todo, run.batch_size))
        with reporter.progress(len(todo), events) as observer:
            make_images(lambda batch, progress: make(model, batch, progress), todo, run.out, run.batch_size,
                        lambda: model.info, family.operations[operation], digests, tally, observer)
    if run.grid:
        reporter.note(f"contact sheet: {write_grid(tally, run.out, run.per_item)}")
    skipped = f" ({len(tally.skipped)} skipped)" if tally.skipped else ""
    reporter.note(f"{len(tally.written)} images written to {run.out}{skipped}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # a broken torch install is exactly what a bug report needs to show
        return {"torch": f"cannot import torch: {e}"}
    from ..devices import mps_available

    found: dict[str, Any] = {"torch": torch.__version__, "cpu threads": torch.get_num_threads(),
                             "cuda": torch.version.cuda or "not built with CUDA", "mps": mps_available()}
    if torch.cuda.is_available():
        for k in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(k)
            found[f"cuda:{k}"] = (f"{torch.cuda.get_device_name(k)}, {total / 2**30:.1f} GiB VRAM, "
                                  f"{free / 2**30:.1f} GiB free")
    else:
        found["cuda devices"] = 0
    return found


def system_info() -> dict[str, Any]:
    """Versions, devices, VRAM, the download cache and the registry, for bug reports."""
    from huggingface_hub import constants

    from ..registry import registry_path

    packages = ("huggingface_hub", "safetensors", "pillow", "tqdm", "typer", "rich")
    return {
        "dalle": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **{package: _version(package) for package in packages},
        **_devices(),
        "hub cache": constants.HF_HUB_CACHE,
        "hub endpoint": constants.ENDPOINT,
        "offline (HF_HUB_OFFLINE)": constants.is_offline_mode(),
        "token (HF_TOKEN)": "set" if os.environ.get("HF_TOKEN") else "not set",
        "registry": str(registry_path()),
    }


def model_rows() -> list[dict[str, Any]]:
    """One row per registry entry: alias, kind, family, where it comes from, its size, license, and what is on
    disk."""
    from ..hub import status
    from ..registry import load_registry

    rows = []
    for alias, entry in load_registry().items():
        state = status(entry)
        source = " + ".join(f"{repo.repo_id}@{repo.revision}" for repo in entry.repos.values()) or str(entry.path)
        rows.append({
            "name": alias, "kind": entry.kind, "family": entry.family, "description": entry.description,
            "source": source, "size_bytes": entry.size_bytes, "size_exact": entry.size_exact, "license": entry.license,
            "state": state.state, "on_disk_bytes": state.size, "folder": str(state.folder) if state.folder else None,
            "image_encoder": entry.image_encoder,
        })
    return rows
