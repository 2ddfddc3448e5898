"""The `dalle` command line: gen, vary, pull, models and info.

Results go to stdout (one JSON record per image with --json, else the paths written); everything meant for people goes
to stderr: notices, warnings, progress (a rich bar on a terminal, plain lines otherwise) and errors, one line each
with no traceback unless --debug. Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input, 130 interrupted.
torch is imported only by commands that run a model, so `dalle --help` and `dalle models` start fast.
"""

import json
import secrets
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import DalleError, UsageError
from .naming import DEFAULT_TEMPLATE

app = typer.Typer(name="dalle", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Make images from text, and variations of images, with DALL·E 2-style (unCLIP) models "
                       "on your own machine.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


ModelOpt = Annotated[str, typer.Option("--model", "-m", envvar="DALLE_MODEL", show_default=True,
                                       help="Registry alias (see `dalle models`), hub id owner/name[@revision], or "
                                            "a local folder.")]
NumOpt = Annotated[int, typer.Option("--num", "-n", min=1, help="Images per prompt (per input image for vary).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Image i of a prompt gets seed + i. "
                                                "Default: a random base seed, which is reported.")]
PriorStepsOpt = Annotated[Optional[int], typer.Option("--prior-steps", help="Prior steps [model default].")]
DecoderStepsOpt = Annotated[Optional[int], typer.Option("--decoder-steps", help="Decoder steps [model default].")]
SrStepsOpt = Annotated[Optional[int], typer.Option("--sr-steps", help="Super-resolution steps [model default].")]
PriorGuidanceOpt = Annotated[Optional[float], typer.Option("--prior-guidance",
                                                           help="Prior guidance scale, 1 = off [model default].")]
DecoderGuidanceOpt = Annotated[Optional[float], typer.Option("--decoder-guidance",
                                                             help="Decoder guidance scale, 1 = off [model default].")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
NameOpt = Annotated[str, typer.Option("--name", help="File name template; fields {index} {slug} {seed} {i} {item} "
                                                     "{model}, Python format specs allowed.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Precision: auto is fp16 on GPUs, fp32 on the CPU.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images made together (more is faster, and "
                                                                   "needs more memory).")]
LowVramOpt = Annotated[bool, typer.Option("--low-vram", help="Keep only the running stage on the GPU.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (as HF_HUB_OFFLINE=1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record per image on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json records).")]
SkipOpt = Annotated[bool, typer.Option("--skip-existing", help="Do not make images whose file exists (resume).")]
GridOpt = Annotated[bool, typer.Option("--grid", help="Also write a contact sheet, grid.png.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


class Display:
    """Everything the CLI shows. stdout: records or paths. stderr: notices, warnings, progress and errors."""

    def __init__(self, quiet: bool = False, json_lines: bool = False) -> None:
        self.quiet, self.json_lines = quiet, json_lines
        self.err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)
        self.bar: Progress | None = None

    def _say(self, message: str) -> None:
        (self.bar.console if self.bar else self.err).print(message, markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            self._say(message)

    def warn(self, message: str) -> None:
        self.note(f"warning: {message}")

    def error(self, message: str) -> None:
        self._say(f"error: {message}")

    def result(self, entry: dict[str, Any]) -> None:
        """One image made: its JSON record with --json, else its path (nothing with --quiet)."""
        if self.json_lines:
            line = json.dumps(entry)  # ASCII with \u escapes: safe on any console encoding
        elif self.quiet:
            return
        else:
            line = entry["path"]
        if self.bar and sys.stdout.isatty():
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self, images: int, steps: int) -> Iterator["Meter"]:
        """A meter over `images` images taking `steps` sampler steps in all."""
        if not self.quiet and self.err.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.err,
                                redirect_stdout=False, redirect_stderr=False)
            try:
                with self.bar:
                    yield Meter(self, images, self.bar.add_task("starting", total=steps))
            finally:
                self.bar = None
        else:
            yield Meter(self, images, None)


class Meter:
    """Reports a run: the engine's progress events drive the rich bar, or plain lines (one per finished stage and per
    batch, with an ETA), or nothing with --quiet; written images go to `Display.result`."""

    def __init__(self, display: Display, images: int, task: Any) -> None:
        self.display, self.images, self.task = display, images, task
        self.done, self.started = 0, time.perf_counter()

    def batch(self, jobs: list[Any]) -> Callable[[Any], None]:
        span = f"images {self.done + 1}-{self.done + len(jobs)} of {self.images}"

        def on_event(event: Any) -> None:
            if self.task is not None and self.display.bar is not None:
                self.display.bar.update(self.task, advance=1, description=f"{event.stage} {event.step}/{event.steps}"
                                                                          f" · {span}")
            elif event.step == event.steps:
                self.display.note(f"{span}: {event.stage} done ({event.steps} step{'s' * (event.steps != 1)})")

        return on_event

    def image(self, entry: dict[str, Any]) -> None:
        self.display.result(entry)

    def finished(self, jobs: list[Any]) -> None:
        self.done += len(jobs)
        if self.task is None and self.done < self.images:
            left = (time.perf_counter() - self.started) / self.done * (self.images - self.done)
            self.display.note(f"{self.done} of {self.images} images made, about {left:.0f} s left")


@contextmanager
def guarded(display: Display, debug: bool, tally: Any = None, out: Path | None = None) -> Iterator[None]:
    """Run a command body: a `DalleError` becomes one error line and its exit code, Ctrl-C exit code 130 with the
    number of images written, anything else exit code 1; tracebacks only with --debug."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        count = len(tally.written) if tally is not None else 0
        display.error(f"interrupted: {count} images written" + (f" to {out}" if out is not None else ""))
        raise typer.Exit(130) from None
    except Exception as e:
        if debug:
            traceback.print_exc(file=sys.stderr)
        count = f" ({len(tally.written)} images were written)" if tally is not None and tally.written else ""
        display.error(_describe(e) + count)
        raise typer.Exit(e.exit_code if isinstance(e, DalleError) else 1) from None


def _describe(e: Exception) -> str:
    torch = sys.modules.get("torch")
    if isinstance(e, DalleError):
        return str(e)
    if isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError)):
        return "out of memory: try --low-vram or a smaller --batch-size"
    first = str(e).splitlines()[0] if str(e) else ""
    return f"unexpected {type(e).__name__}: {first} (run again with --debug for the traceback, and please report it)"


def _seed(seed: int | None, display: Display) -> int:
    if seed is not None:
        return seed
    seed = secrets.randbelow(2**31)
    display.note(f"seed {seed} (random; --seed {seed} makes the same images again)")
    return seed


def _quiet_downloads(quiet: bool) -> None:
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _settings(defaults: Any, **options: Any) -> Any:
    from .registry import apply_settings

    given = {key: value for key, value in options.items() if value is not None}
    return apply_settings(defaults, given, "options", UsageError)


def _run(model: str, out: Path, device: Device, dtype: DType, low_vram: bool, offline: bool, batch_size: int,
         skip_existing: bool, grid: bool, per_item: int) -> Any:
    from .runs import Run

    options = {"device": device.value, "dtype": dtype.value, "low_vram": low_vram, "offline": offline}
    return Run(model, options, out, batch_size, skip_existing, grid, per_item)


@app.command()
def gen(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="One or more prompts, each in quotes.",
                                                           show_default=False)] = None,
    prompt_file: Annotated[Optional[str], typer.Option(
        "--prompts", "-f", metavar="FILE", help="Read prompts from FILE (- for stdin): UTF-8, one per line, "
                                                "# comments; a JSON object line sets prompt, seed, n and settings "
                                                "for that prompt.")] = None,
    model: ModelOpt = "karlo", num: NumOpt = 1, seed: SeedOpt = None, prior_steps: PriorStepsOpt = None,
    decoder_steps: DecoderStepsOpt = None, sr_steps: SrStepsOpt = None, prior_guidance: PriorGuidanceOpt = None,
    decoder_guidance: DecoderGuidanceOpt = None, out: OutOpt = Path("outputs"), name: NameOpt = DEFAULT_TEMPLATE,
    device: DeviceOpt = Device.auto, dtype: DTypeOpt = DType.auto, batch_size: BatchOpt = 4,
    low_vram: LowVramOpt = False, offline: OfflineOpt = False, json_lines: JsonOpt = False, quiet: QuietOpt = False,
    skip_existing: SkipOpt = False, grid: GridOpt = False, debug: DebugOpt = False,
) -> None:
    """Make images from text prompts."""
    from .runs import Tally, execute

    display, tally = Display(quiet, json_lines), Tally()
    with guarded(display, debug, tally, out):
        from .batch import argument_prompts, plan_prompts, read_prompt_file
        from .hub import resolve
        from .naming import check_template
        from .outputs import ensure_writable

        _quiet_downloads(quiet)
        found = argument_prompts(prompts or [])
        if prompt_file is not None:
            found += read_prompt_file(prompt_file, sys.stdin.buffer.read() if prompt_file == "-" else None)
        if not found:
            raise UsageError("no prompt: give one or more prompts, or -f FILE")
        check_template(name)
        ensure_writable(out)
        resolved = resolve(model, offline=offline, on_notice=display.note)
        base = _settings(resolved.defaults, prior_steps=prior_steps, decoder_steps=decoder_steps, sr_steps=sr_steps,
                         prior_guidance=prior_guidance, decoder_guidance=decoder_guidance)
        jobs = plan_prompts(found, base, _seed(seed, display), num, name, resolved.info.name)
        counts = {prompt.n or num for prompt in found}

        def make(engine: Any, batch: list[Any], progress: Callable) -> list[Any]:
            return engine.generate([job.prompt for job in batch], [job.seed for job in batch], batch[0].settings,
                                   progress=progress)

        run = _run(model, out, device, dtype, low_vram, offline, batch_size, skip_existing, grid,
                   counts.pop() if len(counts) == 1 else 1)
        execute(run, jobs, make, lambda s: s.prior_steps + s.decoder_steps + s.sr_steps, {}, tally, display)


@app.command()
def vary(
    images: Annotated[list[str], typer.Argument(help="Pictures to vary: any size, any format Pillow reads.",
                                                show_default=False)],
    model: ModelOpt = "karlo", num: NumOpt = 1, seed: SeedOpt = None, decoder_steps: DecoderStepsOpt = None,
    sr_steps: SrStepsOpt = None, decoder_guidance: DecoderGuidanceOpt = None, out: OutOpt = Path("outputs"),
    name: NameOpt = DEFAULT_TEMPLATE, device: DeviceOpt = Device.auto, dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = 4, low_vram: LowVramOpt = False, offline: OfflineOpt = False,
    json_lines: JsonOpt = False, quiet: QuietOpt = False, skip_existing: SkipOpt = False, grid: GridOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make variations of images (EXIF orientation honoured, transparency flattened onto white)."""
    from .runs import Tally, execute

    display, tally = Display(quiet, json_lines), Tally()
    with guarded(display, debug, tally, out):
        from .batch import plan_sources
        from .hub import prepare
        from .images import load_image
        from .naming import check_template
        from .outputs import ensure_writable
        from .runs import file_digest

        _quiet_downloads(quiet)
        sources = [Path(image) for image in images]
        pictures = {path: load_image(path) for path in sources}
        digests = {path: file_digest(path) for path in sources}
        check_template(name)
        ensure_writable(out)
        resolved = prepare(model, offline=offline, on_notice=display.note, image_encoder=True, why=" on first use")
        base = _settings(resolved.defaults, decoder_steps=decoder_steps, sr_steps=sr_steps,
                         decoder_guidance=decoder_guidance)
        jobs = plan_sources(sources, base, _seed(seed, display), num, name, resolved.info.name)

        def make(engine: Any, batch: list[Any], progress: Callable) -> list[Any]:
            return engine.vary([pictures[job.source] for job in batch], [job.seed for job in batch],
                               batch[0].settings, progress=progress)

        run = _run(model, out, device, dtype, low_vram, offline, batch_size, skip_existing, grid, num)
        execute(run, jobs, make, lambda s: 1 + s.decoder_steps + s.sr_steps, digests, tally, display)


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="Registry alias or hub id owner/name[@revision].", show_default=False)],
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    """Download a model (and the image encoder `dalle vary` uses with it) ahead of use. Resumes; prints the folder."""
    display = Display(quiet)
    with guarded(display, debug):
        from .hub import folder_size, prepare
        from .registry import format_size

        _quiet_downloads(quiet)
        resolved = prepare(model, on_notice=display.note, image_encoder=True, encoders=True)
        if resolved.info.repo_id is None:
            display.note(f"{model} is a local folder: nothing to download")
        for folder in (resolved.folder, resolved.image_encoder):
            if folder is not None:
                display.note(f"ready: {folder} ({format_size(folder_size(folder))})")
        sys.stdout.write(f"{resolved.folder}\n")


@app.command()
def models(json_lines: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the known models, whether they are downloaded, and their size on disk."""
    display = Display()
    with guarded(display, debug):
        from .hub import cache_dir
        from .registry import format_size
        from .runs import model_rows

        rows = model_rows()
        if json_lines:
            for row in rows:
                sys.stdout.write(json.dumps(row) + "\n")
            return
        table = Table("name", "what", "from", "size", "on disk", "license", box=None, pad_edge=False)
        for row in rows:
            size = ("" if row["size_exact"] else "~") + format_size(row["size_bytes"]) if row["size_bytes"] else "-"
            disk = {"downloaded": "yes", "partial": "partly", "missing": "no"}[row["state"]]
            disk += f" ({format_size(row['on_disk_bytes'])})" if row["on_disk_bytes"] else ""
            source = row["source"][:row["source"].index("@") + 8] if "@" in row["source"] else row["source"]
            table.add_row(row["name"], row["description"], source, size, disk, row["license"])
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # no wrapping in pipes
        console.print(table)
        console.print(f"cache: {cache_dir()}  (pull with `dalle pull NAME`)", markup=False)


@app.command()
def info(json_lines: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Versions, devices, VRAM and the download cache, for bug reports."""
    display = Display()
    with guarded(display, debug):
        from .runs import system_info

        facts = system_info()
        if json_lines:
            sys.stdout.write(json.dumps(facts) + "\n")
            return
        width = max(len(key) for key in facts)
        sys.stdout.write("".join(f"{key:<{width}}  {value}\n" for key, value in facts.items()))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dalle {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Make images from text, and variations of images, with DALL·E 2-style (unCLIP) models on your machine."""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """The `dalle` console script: SIGTERM stops as Ctrl-C does, and a closed stdout pipe ends quietly."""
    signal.signal(signal.SIGTERM, _interrupt)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="dalle")


if __name__ == "__main__":
    main()
