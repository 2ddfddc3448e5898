"""The CLI's options: those every image-making command shares, and one option per family setting.

Settings options come from the families' settings declarations (`dalle_cli.settings`), never from a list written
here: `--prior-steps` is the field `prior_steps`. An option that only some families have says which in `--help`.
"""

import dataclasses
import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer

from ..families import FAMILIES, Family
from .limits import MAX_COUNT, MAX_SEED
from .naming import DEFAULT_TEMPLATE

TYPES = {"steps": int, "guidance": float, "count": int, "eta": float, "strength": float, "sampler": str, "pixels": int,
         "text": str}


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


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False,
    help="Registry alias (see `dalle models`), hub id owner/name[@revision], or a local folder. Default: the model "
         "an image's record names, else $DALLE_MODEL, else karlo.")]
NumOpt = Annotated[int, typer.Option("--num", "-n", min=1, max=MAX_COUNT,
                                     help="Images per prompt (per input image for vary).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, max=MAX_SEED,
                                                help="Image i of a prompt gets seed + i. Default: a random base "
                                                     "seed, which is reported (and reused to resume the run).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
NameOpt = Annotated[str, typer.Option("--name", help="File name template; fields {index} {slug} {seed} {i} {item} "
                                                     "{model}, Python format specs allowed.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Precision: auto is fp16 on GPUs, fp32 on the CPU.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images made together (more is faster, and "
                                                                   "needs more memory).")]
LowVramOpt = Annotated[bool, typer.Option("--low-vram", help="Keep only the running stage on the GPU.")]
LowMemoryOpt = Annotated[bool, typer.Option(
    "--low-memory", help="Hold only the running stage's weights, read again for every batch (a run of one batch "
                         "on the CPU always does).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (as HF_HUB_OFFLINE=1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record per image on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json records).")]
SkipOpt = Annotated[bool, typer.Option("--skip-existing", help="Do not make images whose file exists (resume).")]
GridOpt = Annotated[bool, typer.Option("--grid", help="Also write a contact sheet, grid.png.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, max=1024, show_default=False,
    help="CPU threads for torch's operators. Default: $DALLE_THREADS, else the cores idle at start.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="Compile the networks with torch.compile: the first batch of each size takes the compile time "
                      "(minutes), later ones run faster. Not with --low-vram or --low-memory.")]
FastOpt = Annotated[bool, typer.Option("--fast", help="Start from the model's fast preset (fewer steps, a faster "
                                                      "sampler), under the settings given.")]


def default_model() -> str:
    """The model a command runs when neither -m nor a record names one: $DALLE_MODEL, else karlo."""
    import os

    return os.environ.get("DALLE_MODEL") or "karlo"


def begin_run(common: "Common", note: Callable[[str], None]) -> None:
    """What every image command does before it loads a model: refuse a bad --name template or --out folder, set
    torch's intra-op threads (--threads, else $DALLE_THREADS, else the idle cores: `devices.threads`), and with
    --compile say through `note` that the first batches take the compile time."""
    import torch

    from ..devices import threads
    from .naming import check_template
    from .outputs import check_writable

    check_template(common.name)
    check_writable(common.out)
    torch.set_num_threads(threads(common.threads))
    if common.compile:
        note("compiling the networks: the first batch of each size takes the compile time")


def flag(setting: str) -> str:
    """The option of a setting: `prior_steps` -> `--prior-steps`."""
    return "--" + setting.replace("_", "-")


def setting_parameters(operation: str, families: Iterable[Family]) -> list[inspect.Parameter]:
    """One keyword parameter, a typer option defaulting to None (the model's default), for every setting that
    `operation` reads in some family, in declaration order. Its help names the families when not all have it."""
    doing = [family for family in families if operation in family.operations]
    owners: dict[str, list[Family]] = {}
    for family in doing:
        for name in family.settings.knobs():
            if family.applies(name, operation):
                owners.setdefault(name, []).append(family)
    parameters = []
    for name, having in owners.items():
        knob = having[0].settings.knobs()[name]
        only = "" if len(having) == len(doing) else f" Only {', '.join(f.title for f in having)} models."
        option = typer.Option(flag(name), help=f"{knob.help}{only} [model default]", show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                            annotation=Annotated[Optional[TYPES[knob.kind]], option]))
    return parameters


def part_parameters(families: Iterable[Family]) -> list[inspect.Parameter]:
    """One option per companion part some family takes (`--prior` for a Kandinsky decoder), naming its families."""
    owners: dict[str, list[Family]] = {}
    for family in families:
        for role in family.companions:
            owners.setdefault(role, []).append(family)
    return [inspect.Parameter(role, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        Optional[str], typer.Option(flag(role), show_default=False, help=(
            f"The {role} the model runs with: a registry alias, hub id or folder (default: the model's own). Only "
            f"{', '.join(f.title for f in having)} models."))]) for role, having in owners.items()]


@dataclass(frozen=True)
class Common:
    """The options every image-making command shares, each field its typer option and default (the settings
    options come after `seed` in --help), and `parts`, the companion options given."""

    model: ModelOpt = None
    num: NumOpt = 1
    seed: SeedOpt = None
    out: OutOpt = Path("outputs")
    name: NameOpt = DEFAULT_TEMPLATE
    device: DeviceOpt = Device.auto
    dtype: DTypeOpt = DType.auto
    batch_size: BatchOpt = 4
    low_vram: LowVramOpt = False
    low_memory: LowMemoryOpt = False
    threads: ThreadsOpt = None
    compile: CompileOpt = False
    fast: FastOpt = False
    offline: OfflineOpt = False
    json_lines: JsonOpt = False
    quiet: QuietOpt = False
    skip_existing: SkipOpt = False
    grid: GridOpt = False
    debug: DebugOpt = False
    parts: dict[str, str] = field(default_factory=dict)


def image_command(operation: str, families: Iterable[Family] = FAMILIES.values(),
                  omit: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Turn `body(own parameters..., common, settings)` into a typer command for `operation`: typer sees the body's
    own parameters, the shared options, one option per companion part (`--prior`) and one per setting the operation
    reads in some family; the body gets `common` (a `Common`, whose `parts` are the companion options given) and
    `settings`, a dict of the setting options given (those left at None are left out). The shared options named in
    `omit` are left out, at their defaults, for a command they mean nothing to."""
    def wrap(body: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(body).parameters.values() if p.name not in ("common", "settings")]
        having = list(families)
        parts, extra = part_parameters(having), setting_parameters(operation, having)
        shared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                    annotation=f.type) for f in dataclasses.fields(Common)
                  if f.name != "parts" and f.name not in omit]
        at = next(k + 1 for k, p in enumerate(shared) if p.name == "seed")
        parameters = [*own, *shared[:at], *parts, *extra, *shared[at:]]

        def command(**values: Any) -> Any:
            chosen_parts = {p.name: values.pop(p.name) for p in parts}
            common = Common(**{p.name: values.pop(p.name) for p in shared},
                            parts={k: v for k, v in chosen_parts.items() if v is not None})
            given = {p.name: values.pop(p.name) for p in extra}
            return body(**values, common=common, settings={k: v for k, v in given.items() if v is not None})

        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        return command

    return wrap
