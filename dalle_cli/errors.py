"""Every failure the library reports is a `DalleError`; the CLI maps each subclass to an exit code.

The library never prints and never exits: it raises one of these with a message that is a single clear line
a user can act on.
"""


class DalleError(Exception):
    """Base class of every error dalle reports to a user. `exit_code` is what the CLI exits with."""

    exit_code: int = 1


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
    """A model name that is neither a registry alias, a hub id nor a local directory."""


class DownloadError(DalleError):
    """The hub could not be reached, or a model is missing while offline."""


class OutOfMemoryError(DalleError):
    """The accelerator ran out of memory; the message suggests --low-vram or a smaller --batch-size."""
