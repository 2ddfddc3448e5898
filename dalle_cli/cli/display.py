"""What the CLI shows: results on stdout (paths, or JSON records), and on stderr notices, warnings, progress (a rich
bar on a terminal, plain lines otherwise) and errors, one line each, with the advice for the error's hint."""

import json
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import DalleError


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
    number of images written (or what an interrupted download kept), anything else exit code 1; tracebacks only
    with --debug."""
    written = (lambda: tally.written) if tally is not None else (lambda: 0)
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:
        count = f"{written()} image{'s' * (written() != 1)} written" + (f" to {out}" if out is not None else "")
        display.error(f"interrupted: {e}; {count}" if str(e) else f"interrupted: {count}")
        raise typer.Exit(130) from None
    except Exception as e:
        if debug:
            traceback.print_exc(file=sys.stderr)
        count = f" ({written()} image{'s' * (written() != 1)} {'was' if written() == 1 else 'were'} written)" \
            if written() else ""
        display.error(describe(e, debug) + count)
        raise typer.Exit(e.exit_code if isinstance(e, DalleError) else 1) from None


# What the CLI advises for each hint the library gives (see dalle_cli.errors).
ADVICE = {
    "low_vram": ": try --low-vram or a smaller --batch-size",
    "pull": "; run `dalle pull {model}` with a network connection first",
    "offline": ", or use --offline with a model you have pulled",
    "vary": " (use `dalle vary`)",
    "info": " (see `dalle info`)",
    "part": ": name one with --{role}, for example --{role} {example}",
}


def describe(e: Exception, debug: bool = False) -> str:
    """The one line an error shows: a `DalleError`'s message with the advice for its hint; anything else as
    unexpected (with the advice to run again with --debug, unless it is on)."""
    torch = sys.modules.get("torch")
    if isinstance(e, DalleError):
        return str(e) + (ADVICE[e.hint].format(**e.facts) if e.hint else "")
    if isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError)):
        return "out of memory" + ADVICE["low_vram"]
    first = str(e).splitlines()[0] if str(e) else ""
    advice = "please report it, with the traceback above" if debug else \
        "run again with --debug for the traceback, and please report it"
    return f"unexpected {type(e).__name__}: {first} ({advice})"
