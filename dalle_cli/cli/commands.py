"""The `dalle` commands: gen, vary, interp, diff, edit, pull, models and info.

Results go to stdout (one JSON record per image with --json, else the paths written); everything meant for people goes
to stderr: notices, warnings, progress (a rich bar on a terminal, plain lines otherwise) and errors, one line each
with no traceback unless --debug. Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input, 130 interrupted.
torch is imported only by commands that run a model, so `dalle --help` and `dalle models` start fast.
"""

import functools
import itertools
import json
import shutil
import signal
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

try:  # typer keeps its own copy of click since 0.16
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

from .. import __version__
from ..errors import UsageError
from ..families import FAMILIES, Family
from ..settings import DIFF_AMOUNT
from .display import Display, guarded
from .limits import MAX_SEED
from .options import (Common, DebugOpt, JsonOpt, OfflineOpt, QuietOpt, begin_run, default_model, flag,
                      image_command)


def _quiet_downloads(quiet: bool) -> None:
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _make(display: Display, tally: Any, common: Common, settings: dict[str, Any], items: Callable[[], Iterable[Any]],
          inputs: dict[str, Any], digests: dict[Path, str]) -> None:
    """The body of every image-making command: check the name template and the output folder, then run `items()`
    (called once per pass) through `runs.execute`. `inputs` identifies the items for the run's manifest."""
    from .batch import chosen
    from .runs import Models, Request, execute

    _quiet_downloads(common.quiet)
    begin_run(common, display.note)
    default = default_model()
    options = {"device": common.device.value, "dtype": common.dtype.value, "low_vram": common.low_vram,
               "low_memory": common.low_memory, "compile": common.compile, "offline": common.offline}
    models = Models(common.model, default, settings, common.offline, options, display.note,
                    functools.partial(chosen, name=flag), common.parts, common.fast)
    identity = {"inputs": inputs, "model": common.model or default, "parts": common.parts, "settings": settings,
                "num": common.num, "seed": common.seed, "name": common.name, **({"fast": True} if common.fast else {})}
    request = Request(items, identity, models, common.out, common.name, common.num, common.seed, common.batch_size,
                      common.skip_existing, common.grid, digests)
    execute(request, display, tally)


def gen(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="One or more prompts, each in quotes.",
                                                           show_default=False)] = None,
    prompt_file: Annotated[Optional[str], typer.Option(
        "--prompts", "-f", metavar="FILE", help="Read prompts from FILE (- for stdin): UTF-8, one per line, "
                                                "# comments; a JSON object line sets prompt, seed, n and settings "
                                                "for that prompt, and an image's record makes it again.")] = None,
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Make images from text prompts."""
    from .runs import Tally

    display, tally = Display(common.quiet, common.json_lines), Tally()
    with guarded(display, common.debug, tally, common.out), tempfile.TemporaryDirectory(prefix="dalle-") as spool:
        from .batch import argument_prompts, read_prompt_file
        from .runs import file_digest

        given = argument_prompts(prompts or [])
        if not given and prompt_file is None:
            raise UsageError("no prompt: give one or more prompts, or -f FILE")
        path, name = None, None
        if prompt_file == "-":  # read twice (checked, then made), so kept in a file, never in memory
            path, name = Path(spool) / "stdin", "stdin"
            with open(path, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
        elif prompt_file is not None:
            path, name = Path(prompt_file), prompt_file
            if not path.is_file():
                raise UsageError(f"cannot read the prompt file {prompt_file}: "
                                 f"{'it is a directory' if path.is_dir() else 'No such file or directory'}")

        def items() -> Iterable[Any]:
            return itertools.chain(given, read_prompt_file(path, name) if path is not None else ())

        try:
            file = file_digest(path) if path is not None else None
        except OSError as e:
            raise UsageError(f"cannot read the prompt file {prompt_file}: {e.strerror or e}") from None
        _make(display, tally, common, settings, items, {"prompts": [p.text for p in given], "file": file}, {})


def vary(
    images: Annotated[list[str], typer.Argument(help="Pictures to vary: any size, any format Pillow reads.",
                                                show_default=False)],
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Make variations of images (EXIF orientation honoured, transparency flattened onto white)."""
    from .runs import Tally

    display, tally = Display(common.quiet, common.json_lines), Tally()
    with guarded(display, common.debug, tally, common.out):
        from PIL import Image

        from .batch import Picture
        from .runs import file_digest

        digests = {}
        for image in images:  # every input is checked and hashed first, but decoded only when its batch is made
            try:
                with Image.open(image):
                    pass
                digests[Path(image)] = file_digest(Path(image))
            except Exception as e:  # Pillow raises many error types for files it cannot identify
                raise UsageError(f"cannot read image {image}: {e}") from None
        pictures = [Picture(Path(image), f"image {k + 1}") for k, image in enumerate(images)]
        _make(display, tally, common, settings, lambda: pictures,
              {"pictures": [[str(p), d] for p, d in digests.items()]}, digests)


class Noise(str, Enum):
    fixed = "fixed"
    inverted = "inverted"


class Animation(str, Enum):
    webp = "webp"
    gif = "gif"


FramesOpt = Annotated[int, typer.Option("--frames", help="Frames per segment, both ends included (at least 2).")]
OnlyOpt = Annotated[Optional[int], typer.Option("--only", metavar="FRAME", show_default=False,
                                                help="Make only this frame (from 0), in its batch, as its record's "
                                                     "command does.")]
AnimationOpt = Annotated[Animation, typer.Option("--animation", help="The animated file's format.")]
ONE_SEQUENCE = ("num", "skip_existing", "grid")  # shared options that mean nothing to a single sequence of frames


def interp(
    inputs: Annotated[list[str], typer.Argument(help="Two or more pictures (existing files) or prompts (any other "
                                                     "text), in order.", show_default=False)],
    frames: FramesOpt = 5,
    noise: Annotated[Noise, typer.Option("--noise", help="fixed: one x_T from --seed for every frame (paper Fig. 4); "
                                                         "inverted: slerp of the pictures' DDIM inversions, so the "
                                                         "end frames give the pictures back (pictures only).")
                     ] = Noise.fixed,
    noise_seed: Annotated[Optional[int], typer.Option("--noise-seed", min=0, max=MAX_SEED, show_default=False,
                                                      help="Fixed noise from this seed (a frame's record keeps it "
                                                           "as noise_seed), trying no noise candidates.")] = None,
    only: OnlyOpt = None, animation: AnimationOpt = Animation.webp,
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Interpolate between pictures and prompts by slerp of their CLIP image embeddings (DALL·E 2 §3.2): frames, a
    contact sheet and an animation."""
    from .manipulate import interp as run

    run(inputs, frames, noise.value, noise_seed, only, animation.value, common=common, settings=settings)


def diff(
    image: Annotated[str, typer.Argument(help="The picture to change.", show_default=False)],
    to: Annotated[str, typer.Option("--to", metavar="TEXT", show_default=False,
                                    help="The caption to move the picture towards.")],
    baseline: Annotated[Optional[str], typer.Option("--from", metavar="TEXT", show_default=False,
                                                    help="A caption of the picture as it is (default: none).")] = None,
    amount: Annotated[Optional[float], typer.Option("--amount", show_default=False,
                                                    help="How far to move, θ from 0 (the picture) to 1. "
                                                         f"[default: {DIFF_AMOUNT:g}]")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", show_default=False,
                                                  help="Make this many frames from 0 to --amount instead of one "
                                                       "image (at least 2).")] = None,
    only: OnlyOpt = None, animation: AnimationOpt = Animation.webp,
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Move a picture towards a caption: a text diff (DALL·E 2 §3.3), slerp(z_i, norm(z_t - z_t0), θ) decoded from
    the picture's own inverted noise, by a decoder that reads the caption too."""
    from .manipulate import diff as run

    run(image, to, baseline, amount, frames, only, animation.value, common=common, settings=settings)


def edit(
    image: Annotated[str, typer.Argument(help="The picture to edit.", show_default=False)],
    prompt: Annotated[str, typer.Argument(help="What the edited picture shows.", show_default=False)],
    mask: Annotated[Optional[str], typer.Option("--mask", metavar="MASK", show_default=False,
                                                help="Where to repaint: white in a greyscale mask, or transparent "
                                                     "in one with transparency (a picture with transparency is its "
                                                     "own mask). Without a mask: image to image at --strength.")
                    ] = None,
    invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Repaint what the mask keeps instead.")] = False,
    only: Annotated[Optional[int], typer.Option("--only", metavar="IMAGE", show_default=False,
                                                help="Make only this image (from 0), in its batch, as its record's "
                                                     "command does.")] = None,
    *, common: Common, settings: dict[str, Any],
) -> None:
    """Repaint the masked region of a picture from a prompt, or remake the picture from it (image to image)."""
    from .edit import edit as run

    run(image, prompt, mask, invert_mask, only, common=common, settings=settings)


def pull(
    model: Annotated[str, typer.Argument(help="Registry alias or hub id owner/name[@revision].", show_default=False)],
    offline: OfflineOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    """Download a model (and every part its operations use, such as the image encoder of Karlo's variations) ahead
    of use. Resumes; prints the model's folder."""
    display = Display(quiet)
    with guarded(display, debug):
        from ..hub import folder_size
        from ..registry import format_size
        from ..sources import pull as fetch_model

        _quiet_downloads(quiet)
        folders = fetch_model(model, offline=offline, on_notice=display.note)
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
        from .system import model_rows

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
            repos = row["source"].split(" + ")
            source = " + ".join(repo[:repo.index("@") + 8] if "@" in repo else repo for repo in repos)
            table.add_row(row["name"], row["description"], source, size, disk, row["license"])
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # no wrapping in pipes
        console.print(table)
        console.print(f"cache: {cache_dir()}  (pull with `dalle pull NAME`)", markup=False)


def info(json_lines: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Versions, devices, VRAM and the download cache, for bug reports."""
    display = Display()
    with guarded(display, debug):
        from .system import system_info

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


class OneLineErrors(TyperGroup):
    """The command group, with click's usage errors (an unknown option, a bad value) shown as one line, as every
    other error is, instead of click's usage, hint and error block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            command = e.ctx.command_path if getattr(e, "ctx", None) is not None else "dalle"
            sys.stderr.write(f"error: {e.format_message()} (see `{command} --help`)\n")
            sys.exit(e.exit_code)
        except click_errors.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def make_app(families: Iterable[Family] = FAMILIES.values()) -> typer.Typer:
    """The `dalle` command line, with the settings options of `families`."""
    app = typer.Typer(name="dalle", cls=OneLineErrors, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None,
                      help="Make images from text, and variations of images, with DALL·E 2-style (unCLIP) models "
                           "on your own machine.")
    app.callback()(_main)
    app.command()(image_command("generate", families)(gen))
    app.command()(image_command("vary", families)(vary))
    app.command()(image_command("interpolate", families, omit=ONE_SEQUENCE)(interp))
    app.command()(image_command("text_diff", families, omit=(*ONE_SEQUENCE, "fast"))(diff))
    app.command()(image_command("edit", families, omit=("skip_existing", "grid", "fast"))(edit))
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
