"""The public types of the pipelines: settings, progress events and the loaded-model interface.

Importing this module does not import torch, so the CLI can build settings and parse batch files cheaply.
"""

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Settings:
    """Sampling settings. Defaults are Karlo's (Karlo README and diffusers' UnCLIPPipeline)."""

    prior_steps: int = 25
    decoder_steps: int = 25
    sr_steps: int = 7
    prior_guidance: float = 4.0
    decoder_guidance: float = 8.0


@dataclass(frozen=True)
class Progress:
    """One progress event: `stage` is "encode", "prior", "decoder" or "super_res"; `step` counts from 1 to
    `steps` within the stage for the images `first_image` .. `first_image + batch - 1` (0-based) of `images`."""

    stage: str
    step: int
    steps: int
    first_image: int
    batch: int
    images: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from, recorded in every output's metadata so an image can be reproduced."""

    name: str
    repo_id: str | None = None
    revision: str | None = None
    path: str = ""
    extras: dict[str, str] = field(default_factory=dict)
