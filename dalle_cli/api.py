"""The public types every family shares: progress events, and where a loaded model came from. No torch here."""

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """One progress event: `stage` is the pipeline stage ("encode", "prior", "decoder", "super_res", ...); `step`
    counts from 1 to `steps` within the stage for the images `first_image` .. `first_image + batch - 1` (0-based) of
    `images`."""

    stage: str
    step: int
    steps: int
    first_image: int
    batch: int
    images: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from, recorded in every output's metadata so an image can be reproduced: its name,
    the hub repo and revision of its main part (or its local `path`), and `extras`, one "repo@revision" (or path) per
    further part that was used (Karlo's separate image encoder, say)."""

    name: str
    repo_id: str | None = None
    revision: str | None = None
    path: str = ""
    extras: dict[str, str] = field(default_factory=dict)
