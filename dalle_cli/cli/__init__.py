"""The `dalle` command line, and the file-writing code that only it uses: prompt files and run plans (`batch`), the
batch loop and records (`runs`), output files (`outputs`, `naming`), what it shows (`display`) and its options
(`options`). Only this package imports typer and rich; `commands` defines the commands."""

from .commands import app, main
from .display import Display

__all__ = ["Display", "app", "main"]
