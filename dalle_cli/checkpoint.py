"""Read one component of a model folder in the diffusers hub layout into one of our modules.

A component folder holds `config.json` and its weights as `*.safetensors`, or as shards listed by a
`*.safetensors.index.json`. The module is built on the `meta` device, and each tensor is then read from the file on
its own, cast to the requested dtype, placed on the requested device and assigned in place, so a load holds every
weight once, plus one tensor's stored bytes at a time.

Parameter names follow the checkpoint keys, so loading is strict. The one table of exceptions is `IGNORED_KEYS`
below: tensors that older library versions saved but that our modules compute instead.
"""

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .configs import from_config, read_json
from .errors import CheckpointError
from .registry import PICKLE_SUFFIXES

M = TypeVar("M", bound=nn.Module)

# Keys that older transformers releases saved as persistent buffers (e.g. CLIP's `position_ids`). Our modules
# derive them on the fly, so they are dropped on load. This is the only rename table in dalle.
IGNORED_KEYS = re.compile(r"(^|\.)position_ids$")


class _SkipInitialization(TorchFunctionMode):
    """Make torch.nn.init's functions return their tensor untouched while a module is built for loading: its values
    would be overwritten anyway, and initialising on the meta device imports torch._dynamo, which costs over a second
    of start-up. A torch function mode is thread-local, so another thread building modules meanwhile still initialises
    them."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else next(iter((kwargs or {}).values()))
        return func(*args, **(kwargs or {}))


def weight_files(folder: Path, component: str) -> list[Path]:
    """The safetensors files of a component folder, following a shard index when there is one."""
    if not folder.is_dir():
        raise CheckpointError(f"{component}: component folder {folder} is missing")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            shards = sorted(set(json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{component}: unreadable shard index {indexes[0].name}: {e}") from None
        files = [folder / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{component}: shard {missing[0]} listed in {indexes[0].name} is missing")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{component}: {folder} has only pickle weights ({', '.join(pickles)}); dalle loads safetensors only, "
            "because pickle files can run arbitrary code"
        )
    raise CheckpointError(f"{component}: no *.safetensors weights in {folder}")


# The safetensors dtype names (the format's header) and the torch dtypes they are read as.
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def _header(f: Any, path: Path, component: str) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor entries of an open safetensors file's header (key -> {"dtype", "shape", "data_offsets"}) and where
    its data starts. Raises `CheckpointError` for a file that is not safetensors, or is cut short."""
    def unreadable(why: str) -> CheckpointError:
        return CheckpointError(f"{component}: {path.name} is not a readable safetensors file ({why})")

    size = path.stat().st_size
    raw = f.read(8)
    length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 0 < length <= size - 8:
        raise unreadable("no header")
    try:
        header = json.loads(f.read(length))
    except ValueError as e:
        raise unreadable(f"header: {e}") from None
    header.pop("__metadata__", None)
    start = 8 + length
    for key, entry in header.items():
        begin, end = entry.get("data_offsets", (0, -1))
        if entry.get("dtype") not in SAFETENSORS_DTYPES or not 0 <= begin <= end or start + end > size:
            raise unreadable(f"tensor {key} lies outside the file or has an unknown dtype")
    return header, start


def _wanted(key: str, prefixes: tuple[str, ...] | None) -> bool:
    """Whether a checkpoint key is read: not one of `IGNORED_KEYS`, and under one of `prefixes` when given."""
    return not IGNORED_KEYS.search(key) and (prefixes is None or key.startswith(prefixes))


def read_state_dict(
    folder: Path, component: str, dtype: torch.dtype, device: torch.device | str,
    prefixes: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a component, floating ones cast to `dtype`, each read onto `device`.

    With `prefixes`, only keys that start with one of them are read: a file that holds several networks (openai's
    CLIP checkpoints hold both towers) serves one of them without reading the others. Each tensor is read from the
    file on its own into a buffer of its stored bytes, which becomes its storage when it keeps its dtype and stays
    on the CPU and is freed once it is cast or moved otherwise, so a load holds at most one tensor twice (a
    memory-mapped file would count the whole file as resident while it is read).
    """
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, component):
        _check_readable(path, component)
        with open(path, "rb") as f:
            header, start = _header(f, path, component)
            for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                if not _wanted(key, prefixes):
                    continue
                begin, end = entry["data_offsets"]
                f.seek(start + begin)
                buffer = bytearray(end - begin)
                if f.readinto(buffer) != len(buffer):
                    raise CheckpointError(f"{component}: {path.name} is not a readable safetensors file "
                                          f"(tensor {key} is cut short)")
                stored = SAFETENSORS_DTYPES[entry["dtype"]]
                tensor = torch.frombuffer(buffer, dtype=stored) if buffer else torch.empty(0, dtype=stored)
                tensor = tensor.reshape(entry["shape"])  # its storage is the buffer: no copy when kept as stored
                state[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else stored)
    return state


def read_shapes(folder: Path, component: str, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Size]:
    """The shape of every tensor `read_state_dict` would read, from the files' headers alone (no tensor is read)."""
    shapes: dict[str, torch.Size] = {}
    for path in weight_files(folder, component):
        _check_readable(path, component)
        with open(path, "rb") as f:
            header, _ = _header(f, path, component)
        for key, entry in header.items():
            if _wanted(key, prefixes):
                shapes[key] = torch.Size(entry["shape"])
    return shapes


def _check_readable(path: Path, component: str) -> None:
    """Raise `CheckpointError` saying why a weights file cannot be opened: a link whose target is gone (a cache blob
    deleted), or the system's reason (permissions, ...)."""
    if path.is_symlink() and not path.exists():
        raise CheckpointError(f"{component}: {path.name} is a link to {os.readlink(path)}, which is missing")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"{component}: cannot read {path}: {e.strerror or e}") from None


def _check_keys(module: nn.Module, shapes: dict[str, torch.Size], component: str) -> None:
    """Raise `CheckpointError` unless the checkpoint's tensor `shapes`, by key, are exactly the module's."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{component}: checkpoint keys do not match the config: {'; '.join(parts)}")
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(
                f"{component}: tensor {key} has shape {tuple(shapes[key])} in the checkpoint "
                f"but {tuple(shape)} from the config"
            )


def load_weights(
    build: Callable[[], M], folder: Path, component: str, dtype: torch.dtype, device: torch.device | str,
    prefixes: tuple[str, ...] | None = None, lazy: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> M:
    """Build a module with `build()` on the meta device and fill it from the component folder's weights.

    `prefixes` selects part of a multi-network file (see `read_state_dict`). Returns the module in eval mode with
    gradients off, on `device`. Raises `CheckpointError` naming the component
    and the first offending tensors when keys or shapes disagree with the module the config describes.
    With `lazy`, only the files' headers are read and checked now: the module stays on the meta device until
    `fill(module)` reads its weights, and `empty(module)` frees them again (`engine.offload`'s low-memory mode).
    The 4-d weights are laid out in `memory_format` (`devices.conv_layout`).
    """
    with torch.device("meta"), _SkipInitialization():
        module = build()

    def read() -> None:
        state = read_state_dict(folder, component, dtype, device, prefixes)
        _check_keys(module, {k: v.shape for k, v in state.items()}, component)
        module.load_state_dict(state, strict=True, assign=True)
        if memory_format != torch.contiguous_format:
            module.to(memory_format=memory_format)
        leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if leftover:
            raise CheckpointError(f"{component}: tensors not filled from the checkpoint: {', '.join(leftover[:3])}")

    if lazy:
        _check_keys(module, read_shapes(folder, component, prefixes), component)
        setattr(module, _FILL, read)
    else:
        read()
    return module.eval().requires_grad_(False)


_FILL = "_dalle_fill"  # the attribute of a lazily loaded module that reads its weights


def is_empty(module: nn.Module) -> bool:
    """Whether a lazily loaded module holds no weights now."""
    return any(t.is_meta for t in module.parameters())


def fill(module: nn.Module) -> None:
    """Read the weights of a module `load_weights(lazy=True)` built, unless it holds them already."""
    if hasattr(module, _FILL) and is_empty(module):
        getattr(module, _FILL)()


def empty(module: nn.Module) -> None:
    """Free the weights of a module `load_weights(lazy=True)` built (`fill` reads them again); others are kept."""
    if hasattr(module, _FILL):
        module.to("meta")


def load_component(folder: Path, name: str, config_cls: type, module_cls: Callable[[Any], M], dtype: torch.dtype,
                   device: torch.device | str, lazy: bool = False,
                   memory_format: torch.memory_format = torch.contiguous_format) -> M:
    """The component `name` of a model folder: `module_cls(config)` for its `name/config.json`, filled from its
    weights, now or with `lazy` when first needed, in `memory_format` (see `load_weights`)."""
    config = from_config(config_cls, read_json(folder / name / "config.json"))
    return load_weights(lambda: module_cls(config), folder / name, name, dtype, device, lazy=lazy,
                        memory_format=memory_format)
