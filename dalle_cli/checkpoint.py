"""Read one component of a model folder in the diffusers hub layout into one of our modules.

A component folder holds `config.json` and its weights as `*.safetensors`, or as shards listed by a
`*.safetensors.index.json`. The module is built on the `meta` device, and each tensor is then read straight to the
requested device and dtype and assigned in place, so an fp16 load never holds a full fp32 copy.

Parameter names follow the checkpoint keys, so loading is strict. The one table of exceptions is `IGNORED_KEYS`
below: tensors that older library versions saved but that our modules compute instead.
"""

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import safe_open
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


def read_state_dict(
    folder: Path, component: str, dtype: torch.dtype, device: torch.device | str,
    prefixes: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a component, floating ones cast to `dtype`, each read directly onto `device`.

    With `prefixes`, only keys that start with one of them are read: a file that holds several networks (openai's
    CLIP checkpoints hold both towers) serves one of them without reading the others.
    """
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, component):
        _check_readable(path, component)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if IGNORED_KEYS.search(key) or (prefixes is not None and not key.startswith(prefixes)):
                        continue
                    tensor = f.get_tensor(key)
                    state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types, and OSError for I/O
            raise CheckpointError(f"{component}: {path.name} is not a readable safetensors file ({e})") from None
    return state


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


def read_shapes(folder: Path, component: str, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Size]:
    """The shape of every tensor `read_state_dict` would read, from the files' headers alone (no tensor is read)."""
    shapes: dict[str, torch.Size] = {}
    for path in weight_files(folder, component):
        _check_readable(path, component)
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if not (IGNORED_KEYS.search(key) or (prefixes is not None and not key.startswith(prefixes))):
                        shapes[key] = torch.Size(f.get_slice(key).get_shape())
        except Exception as e:  # safetensors raises its own error types, and OSError for I/O
            raise CheckpointError(f"{component}: {path.name} is not a readable safetensors file ({e})") from None
    return shapes


def load_weights(
    build: Callable[[], M], folder: Path, component: str, dtype: torch.dtype, device: torch.device | str,
    prefixes: tuple[str, ...] | None = None, lazy: bool = False,
) -> M:
    """Build a module with `build()` on the meta device and fill it from the component folder's weights.

    `prefixes` selects part of a multi-network file (see `read_state_dict`). Returns the module in eval mode with
    gradients off, on `device`. Raises `CheckpointError` naming the component
    and the first offending tensors when keys or shapes disagree with the module the config describes.
    With `lazy`, only the files' headers are read and checked now: the module stays on the meta device until
    `fill(module)` reads its weights, and `empty(module)` frees them again (`engine.offload`'s low-memory mode).
    """
    with torch.device("meta"), _SkipInitialization():
        module = build()

    def read() -> None:
        state = read_state_dict(folder, component, dtype, device, prefixes)
        _check_keys(module, {k: v.shape for k, v in state.items()}, component)
        module.load_state_dict(state, strict=True, assign=True)
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
                   device: torch.device | str, lazy: bool = False) -> M:
    """The component `name` of a model folder: `module_cls(config)` for its `name/config.json`, filled from its
    weights, now or with `lazy` when first needed (see `load_weights`)."""
    config = from_config(config_cls, read_json(folder / name / "config.json"))
    return load_weights(lambda: module_cls(config), folder / name, name, dtype, device, lazy=lazy)
