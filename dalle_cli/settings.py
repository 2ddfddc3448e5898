"""Sampling settings, declared once per model family.

A family's settings are a frozen dataclass deriving from `Settings`, whose fields are made by the helpers below
(`steps`, `guidance`, `candidates`, `eta`, `strength`, `sampler`, `pixels`, `text`). Each helper records what kind of
value the field holds, which stage of the pipeline reads it, and one line of help. Everything that reads or writes
settings works from that declaration: the CLI's options (`--prior-steps` for `prior_steps`), prompt-file keys, the
defaults in the registry and in model folders, and the record stored with every image. No torch here, so parsing
settings costs nothing at start-up.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from .errors import DalleError, UsageError

S = TypeVar("S", bound="Settings")
_KNOB = "dalle.knob"
MAX_STEPS = 1000
MAX_TEXT = 2000
MAX_CANDIDATES = 16
DIFF_AMOUNT = 0.55  # a text diff's default θ, chosen on shapes (README, "Manipulations")
SAMPLERS = ("ddpm", "ddim", "dpmpp")  # `sampler` values: each stage's own ancestral sampler, DDIM, DPM-Solver++(2M)


@dataclass(frozen=True)
class Knob:
    """What a settings field is: `kind` ("steps", "guidance", "count", "eta", "strength", "sampler", "pixels" or
    "text"), the pipeline `stage` that reads it (None: every operation reads it, unless `operations` names the
    ones that do), one line of `help`, and for "pixels" the allowed range and the multiple."""

    kind: str
    help: str
    stage: str | None = None
    low: int = 0
    high: int = 0
    multiple: int = 1
    operations: tuple[str, ...] | None = None
    optional: bool = False  # None is a value too: the operation then does what it does without the setting

    def reads(self, operation: str, stages: tuple[str, ...]) -> bool:
        """Whether `operation`, running `stages`, reads the setting: the operations it names, else the stage's."""
        if self.operations is not None:
            return operation in self.operations
        return self.stage is None or self.stage in stages


def steps(default: int, stage: str, help: str) -> Any:
    """A sampler step count of `stage`: an integer from 2 to 1000 (a diffusion sampler needs two steps at least)."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("steps", help, stage)})


def guidance(default: float, stage: str, help: str) -> Any:
    """A classifier-free guidance scale of `stage` (Ho & Salimans 2022): a finite number of at least 1; 1 is off."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("guidance", help, stage)})


def inversion_guidance(help: str = "Decoder guidance scale of inverting a picture and of decoding what was "
                                   "inverted (variations at eta, inverted interpolations, text diffs); unset: "
                                   "the decoder's.") -> Any:
    """The decoder's guidance scale in DDIM inversion and in every decoding of an inverted latent, as `guidance`, or
    None (the default): the decoder's own guidance. Guidance bends the ODE that DDIM inverts (Mokady et al. 2023,
    null-text inversion), and a latent decodes back to its picture only at the guidance it was inverted at."""
    return dataclasses.field(default=None, metadata={_KNOB: Knob("guidance", help, "invert", optional=True,
                                                                operations=("vary", "interpolate", "text_diff"))})


def pixels(default: int, help: str, low: int, high: int, multiple: int) -> Any:
    """An image size in pixels, read by every operation: an integer from `low` to `high`, a multiple of `multiple`."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("pixels", help, None, low, high, multiple)})


def text(default: str, help: str, stage: str | None = None) -> Any:
    """A piece of text (a negative prompt, say) of at most 2,000 characters, read by `stage` (None: every
    operation)."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("text", help, stage)})


def candidates(default: int, stage: str,
               help: str = "Image embeddings the prior samples per image, keeping the one closest to the prompt "
                           "(paper §2.2).") -> Any:
    """How many samples `stage` draws to keep the best of: an integer from 1 to 16 (1 draws one, as the reference)."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("count", help, stage)})


def noise_candidates(default: int,
                     help: str = "Fixed-noise interpolations: noises tried, each decoding the whole path, keeping "
                                 "the one whose path goes most steadily from input to input.") -> Any:
    """How many noises a fixed-noise interpolation decodes its path from before it keeps the steadiest
    (`engine.latent.best_path`): an integer from 1 to 16 (1 decodes from the seed's own noise, as the paper's
    Figure 4)."""
    return dataclasses.field(default=default, metadata={_KNOB: Knob("count", help, None,
                                                                    operations=("interpolate",))})


def eta(stage: str, help: str = "Invert the picture and decode it by DDIM at this eta (0 gives it back); "
                                "without it, a variation starts from fresh noise.") -> Any:
    """DDIM's η (Song et al. 2021, eq. 16) for `stage`: a number in [0, 1], or None (the default) where the
    operation then does what it does without DDIM."""
    return dataclasses.field(default=None, metadata={_KNOB: Knob("eta", help, stage)})


def strength(stage: str, help: str = "Image to image: noise the picture to this strength, in (0, 1], then denoise "
                                     "it with the prompt (1 keeps nothing but its size).") -> Any:
    """An edit's strength (SDEdit, Meng et al. 2022): the fraction of the sampler's steps run from the picture noised
    to that step, a number in (0, 1], or None (the default) where the operation then does what it does without it."""
    return dataclasses.field(default=None, metadata={_KNOB: Knob("strength", help, stage)})


def sampler(operations: tuple[str, ...],
            help: str = "Sampler of every stage: ddpm (each stage's own, the reference's), ddim (η = 0) or dpmpp "
                        "(DPM-Solver++ 2M); the last two are deterministic after the start noise.") -> Any:
    """Which sampler runs the diffusion stages of `operations`: one of `SAMPLERS`, or None (the default), the
    stages' own ancestral samplers, which is what "ddpm" names too."""
    return dataclasses.field(default=None, metadata={_KNOB: Knob("sampler", help, None, operations=operations)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(name: str, knob: Knob, value: Any, where: str, error: type[DalleError] = UsageError) -> Any:
    """`value` as the field `name` holds it (guidance scales become floats). Raises `error`, its message starting
    with `where`, for a value outside the field's kind: steps 2..1000; guidance finite and at least 1 (or None where
    the knob is `optional`); counts 1..16; η in [0, 1] or None; strength in (0, 1] or None; a sampler one of
    `SAMPLERS` or None; pixels in range and on the multiple; text a string of at most 2,000 characters."""
    if knob.kind == "steps":
        if not (_is_int(value) and 2 <= value <= MAX_STEPS):
            raise error(f"{where}: {name} must be an integer from 2 to {MAX_STEPS}, got {value!r}")
        return value
    if knob.kind == "guidance":
        if value is None and knob.optional:
            return None
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1.0):
            raise error(f"{where}: {name} must be a number of at least 1 (1 turns guidance off), got {value!r}")
        if not math.isfinite(value):
            raise error(f"{where}: {name} must be a finite number, got {value!r}")
        return float(value)
    if knob.kind == "count":
        if not (_is_int(value) and 1 <= value <= MAX_CANDIDATES):
            raise error(f"{where}: {name} must be an integer from 1 to {MAX_CANDIDATES}, got {value!r}")
        return value
    if knob.kind == "eta":
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value <= 1):
            raise error(f"{where}: {name} must be a number from 0 to 1, got {value!r}")
        return None if value is None else float(value)
    if knob.kind == "strength":
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 < value <= 1):
            raise error(f"{where}: {name} must be a number greater than 0 and at most 1, got {value!r}")
        return None if value is None else float(value)
    if knob.kind == "sampler":
        if value is not None and value not in SAMPLERS:
            raise error(f"{where}: {name} must be one of {', '.join(SAMPLERS)}, got {value!r}")
        return value
    if knob.kind == "pixels":
        if not (_is_int(value) and knob.low <= value <= knob.high and value % knob.multiple == 0):
            raise error(f"{where}: {name} must be a multiple of {knob.multiple} from {knob.low} to {knob.high}, "
                        f"got {value!r}")
        return value
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise error(f"{where}: {name} must be a string of at most {MAX_TEXT} characters")
    return value


class Settings:
    """Base of every family's settings dataclass (frozen, hashable, so batches group by them)."""

    @classmethod
    def knobs(cls) -> dict[str, Knob]:
        """Every field's `Knob`, in declaration order."""
        return {f.name: f.metadata[_KNOB] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def updated(self: S, raw: Mapping[str, Any], where: str, error: type[DalleError] = UsageError) -> S:
        """These settings with the fields named in `raw` replaced, each value checked (`check_value`). Raises `error`,
        its message starting with `where`, for a name that is not a field or a bad value."""
        knobs = self.knobs()
        unknown = sorted(set(raw) - set(knobs))
        if unknown:
            raise error(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(knobs)})")
        checked = {name: check_value(name, knobs[name], value, where, error) for name, value in raw.items()}
        return dataclasses.replace(self, **checked)  # type: ignore[type-var]

    def used(self, operation: str, stages: tuple[str, ...], *, inverting: bool = True) -> dict[str, Any]:
        """The values `operation`, running `stages`, reads, by name, in declaration order: what its record holds.
        Which settings it reads is `Knob.reads`. The inversion's settings (stage "invert") are left out when the
        operation inverts nothing (`inverting`: a variation without η, an interpolation of fixed noise), and so is a
        setting left at None (no η), so records stay as they were before it existed."""
        return {name: getattr(self, name) for name, knob in self.knobs().items()
                if knob.reads(operation, stages) and getattr(self, name) is not None
                and (inverting or knob.stage != "invert")}

    def for_inversion(self: S) -> S:
        """These settings as an inversion and the decodings of its latents read them: the decoder guided at
        its `inversion_guidance`, where the family declares one and it is set."""
        scale = getattr(self, "inversion_guidance", None)
        return self if scale is None else dataclasses.replace(self, decoder_guidance=scale)  # type: ignore[type-var]
