"""Every failure the library reports is a `DalleError`; the CLI maps each subclass to an exit code.

The library never prints and never exits: it raises one of these with a message that is a single clear line
stating the fact. Where the caller can do something about it, the error also carries a `hint`, a word from the
library's own vocabulary below, plus the facts the advice needs (`model`, say). A program turns a hint into its own
advice (the CLI names its flags); the library never names a flag or a command.

Hints:
- "low_vram": less memory would do: keep one stage on the accelerator at a time (`load(..., low_vram=True)`), or
  make fewer images at once.
- "pull": the model (`facts["model"]`) must be downloaded while online before it can be used offline.
- "offline": models already downloaded work without the network.
- "vary": the model has no prior, so it makes variations of images only.
- "info": the torch build and the devices it sees explain it.
- "part": the model needs a part of another model (`facts["role"]`, a Kandinsky decoder's "prior"); `facts["example"]`
  names a model that has one.
"""

from typing import Any

HINTS = ("low_vram", "pull", "offline", "vary", "info", "part")


class DalleError(Exception):
    """Base class of every error dalle reports to a user. `exit_code` is what the CLI exits with; `hint` is one of
    `HINTS` or None, and `facts` hold the values the hint's advice needs."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, **facts: Any) -> None:
        if hint is not None and hint not in HINTS:
            raise ValueError(f"unknown hint {hint!r}")
        super().__init__(message)
        self.hint = hint
        self.facts = facts


class UsageError(DalleError):
    """Bad input from the user: a bad option value, an empty prompt, an unreadable image (exit code 2)."""

    exit_code = 2


class CheckpointError(DalleError):
    """A model folder that cannot be loaded: missing component, pickle-only weights, key or shape mismatch."""


class ConfigError(CheckpointError):
    """A config.json that names something dalle does not implement (an unknown block type, say)."""


class SchedulerError(UsageError):
    """Sampler settings the diffusion math cannot honour, such as a single inference step."""


class ModelNotFoundError(UsageError):
    """A model name that is neither a registry alias, a hub id nor a local directory, or a folder dalle cannot run."""


class DownloadError(DalleError):
    """The hub could not be reached, or a model is missing while offline."""


class OutOfMemoryError(DalleError):
    """The accelerator ran out of memory (hint "low_vram")."""


class CompileError(DalleError):
    """torch.compile failed to compile a network (on the CPU, TorchInductor needs a working C++ compiler)."""


class DownloadInterrupted(KeyboardInterrupt):
    """A download stopped by an interrupt (Ctrl-C). Not a `DalleError`: it stays a `KeyboardInterrupt`, so callers
    that handle interrupts keep doing so (the CLI exits with `exit_code`, 130). Its message is one line saying what the
    cache kept; `facts` hold `model`, `kept` and `total` (files) and `size` (the bytes kept)."""

    exit_code: int = 130

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.facts = facts
