"""Parse hub `config.json` dictionaries into our config dataclasses.

The reference libraries write many keys we do not need (`_class_name`, `_diffusers_version`, training-only
settings). The rule, shared by every component:
- keys that start with `_` and keys the dataclass does not declare are ignored;
- a key that is missing takes the dataclass default, which is the reference library's default;
- a `null` value keeps `None` where the field allows it, and otherwise falls back to the default;
- lists become tuples, so configs stay hashable and immutable.
"""

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .errors import CheckpointError, ConfigError

T = TypeVar("T")


def _allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is type(None) or annotation is Any


def from_config(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Build the dataclass `cls` from a config dictionary, following the rules in the module docstring."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in raw or not field.init:
            continue
        value = raw[field.name]
        if value is None and not _allows_none(hints[field.name]):
            continue
        values[field.name] = tuple(value) if isinstance(value, list) else value
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING  # type: ignore[arg-type]
                and f.default_factory is dataclasses.MISSING and f.name not in values]
    if required:
        raise ConfigError(f"{cls.__name__}: the config has no value for required key {required[0]!r}")
    return cls(**values)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from `path`, turning a missing or malformed file into a `CheckpointError`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"missing file {path}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def check_choice(component: str, key: str, value: Any, supported: tuple[Any, ...]) -> None:
    """Raise a `ConfigError` when a config value names something dalle does not implement."""
    if value not in supported:
        choices = ", ".join(str(s) for s in supported)
        raise ConfigError(f"{component}: unsupported {key} {value!r} (dalle supports {choices})")
