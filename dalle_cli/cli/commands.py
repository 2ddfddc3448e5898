"""The `dalle` commands: gen, vary, pull, models and info.

Results go to stdout (one JSON record per image with --json, else the paths written); everything meant for people goes
to stderr: notices, warnings, progress (a rich bar on a terminal, plain lines otherwise) and errors, one line each
with no traceback unless --debug. Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input, 130 interrupted.
torch is imported only by commands that run a model, so `dalle --help` and `dalle models` start fast.
"""

import json
import secrets
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..errors import UsageError
from ..families import FAMILIES, Family
from .display import Display, guarded
from .options import Common, DebugOpt, JsonOpt, QuietOpt, flag, image_command


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


def _make(operation: str, common: Common, settings: dict[str, Any], gather: Callable[[], Any],
          plan: Callable[[Any, Any, Any, int], list[Any]], make: Callable[[Any, Any, list[Any], Callable], list[Any]],
          digests: Callable[[Any], dict[Path, str]], per_item: Callable[[Any], int]) -> None:
    """The body of every image-making command: `gather()` the inputs (prompts, pictures), check the name template,
    find the model, apply the setting options, check the output folder, `plan(inputs, source, settings, seed)` the
    jobs, then make them batch by batch (`make(model, inputs, batch, progress)`) and write them."""
    from .runs import Run, Tally, execute

    display, tally = Display(common.quiet, common.json_lines), Tally()
    with guarded(display, common.debug, tally, common.out):
        from ..sources import locate
        from .batch import chosen
        from .naming import check_template
        from .outputs import ensure_writable

        _quiet_downloads(common.quiet)
        inputs = gather()
        check_template(common.name)
        source = locate(common.model, offline=common.offline, on_notice=display.note)
        base = chosen(source, operation, source.defaults, settings, "options", name=flag)
        ensure_writable(common.out)
        jobs = plan(inputs, source, base, _seed(common.seed, display))
        options = {"device": common.device.value, "dtype": common.dtype.value, "low_vram": common.low_vram,
                   "offline": common.offline}
        run = Run(source, options, common.out, common.batch_size, common.skip_existing, common.grid, per_item(inputs))
        execute(run, operation, jobs, lambda model, batch, progress: make(model, inputs, batch, progress),
                digests(inputs), tally, display)


def gen(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="One or more prompts, each in quotes.",
                                                           show_default=False)] = None,
    prompt_file: Annotated[Optional[str], typer.Option(
        "--prompts", "-f", metavar="FILE", help="Read prompts from FILE (- for stdin): UTF-8, one per line, "
                                                "# comments; a JSON object line sets prompt, seed, n and settings "
                                                "for that prompt.")] = None,
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Make images from text prompts."""
    from .batch import argument_prompts, plan_prompts, read_prompt_file

    def gather() -> list[Any]:
        found = argument_prompts(prompts or [])
        if prompt_file is not None:
            found += read_prompt_file(prompt_file, sys.stdin.buffer.read() if prompt_file == "-" else None)
        if not found:
            raise UsageError("no prompt: give one or more prompts, or -f FILE")
        return found

    def make(engine: Any, found: list[Any], batch: list[Any], progress: Callable) -> list[Any]:
        return engine.generate([job.prompt for job in batch], [job.seed for job in batch], batch[0].settings,
                               progress=progress)

    def per_item(found: list[Any]) -> int:
        counts = {prompt.n or common.num for prompt in found}
        return counts.pop() if len(counts) == 1 else 1

    _make("generate", common, settings, gather,
          lambda found, source, base, seed: plan_prompts(found, base, seed, common.num, common.name, source),
          make, lambda found: {}, per_item)


def vary(
    images: Annotated[list[str], typer.Argument(help="Pictures to vary: any size, any format Pillow reads.",
                                                show_default=False)],
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Make variations of images (EXIF orientation honoured, transparency flattened onto white)."""
    from ..images import load_image
    from .batch import plan_sources
    from .runs import file_digest

    def gather() -> dict[Path, Any]:
        return {Path(image): load_image(image) for image in images}

    def make(engine: Any, pictures: dict[Path, Any], batch: list[Any], progress: Callable) -> list[Any]:
        return engine.vary([pictures[job.source] for job in batch], [job.seed for job in batch], batch[0].settings,
                           progress=progress)

    _make("vary", common, settings, gather,
          lambda found, source, base, seed: plan_sources(list(found), base, seed, common.num, common.name, source),
          make, lambda found: {path: file_digest(path) for path in found}, lambda found: common.num)


def pull(
    model: Annotated[str, typer.Argument(help="Registry alias or hub id owner/name[@revision].", show_default=False)],
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    """Download a model (and every part its operations use, such as the image encoder of Karlo's variations) ahead
    of use. Resumes; prints the model's folder."""
    display = Display(quiet)
    with guarded(display, debug):
        from ..hub import folder_size
        from ..registry import format_size
        from ..sources import pull as fetch_model

        _quiet_downloads(quiet)
        folders = fetch_model(model, on_notice=display.note)
        if not any(from_hub for _, from_hub in folders):
            display.note(f"{model} is a local folder: nothing to download")
        for folder, _ in folders:
            display.note(f"ready: {folder} ({format_size(folder_size(folder))})")
        sys.stdout.write(f"{folders[0][0]}\n")


def models(json_lines: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the known models, whether they are downloaded, and their size on disk."""
    display = Display()
    with guarded(display, debug):
        from ..hub import cache_dir
        from ..registry import format_size
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


def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Make images from text, and variations of images, with DALL·E 2-style (unCLIP) models on your machine."""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def make_app(families: Iterable[Family] = FAMILIES.values()) -> typer.Typer:
    """The `dalle` command line, with the settings options of `families`."""
    app = typer.Typer(name="dalle", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None,
                      help="Make images from text, and variations of images, with DALL·E 2-style (unCLIP) models "
                           "on your own machine.")
    app.callback()(_main)
    app.command()(image_command("generate", families)(gen))
    app.command()(image_command("vary", families)(vary))
    for command in (pull, models, info):
        app.command()(command)
    return app


app = make_app()


def main() -> None:
    """The `dalle` console script: SIGTERM stops as Ctrl-C does, and a closed stdout pipe ends quietly."""
    signal.signal(signal.SIGTERM, _interrupt)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="dalle")


if __name__ == "__main__":
    main()
