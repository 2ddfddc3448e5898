"""What a model family declares: its settings, the operations it supports, the pipeline classes it runs and how its
models load. Declaring a family imports no torch; its loader is imported only when a model is loaded."""

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..settings import Settings


@dataclass(frozen=True)
class Family:
    """One model family.

    - `name`: its registry and `dalle.json` name ("unclip"); `title` names it for people.
    - `class_names`: the `model_index.json` `_class_name` of each kind of folder it loads, and the role that folder
      plays (a Kandinsky decoder folder is the "decoder", a prior folder the "prior").
    - `settings`: its settings dataclass; an instance with no arguments holds the family's own defaults.
    - `operations`: what its models can do ("generate", "vary", ...), each with the pipeline stages it runs in order.
      Settings whose stage an operation does not run do not apply to that operation (variations have no prior).
    - `roles`: the parts a model is made of, each a folder: the first is the model itself ("model", or
      "prior" and "decoder" for a family that spans two repos); later ones may be fetched only when an operation
      needs them (Karlo's separate "image_encoder").
    - `loader`: "module:function" of `function(source, device, dtype, low_vram, on_notice) -> model`.
    - `companions`: the roles a user may name a folder or repo for besides the model itself (a decoder's "prior").
    - `fast`: the family's fast preset, settings laid over a model's defaults (fewer steps, a faster sampler), which a
      model's folder or registry entry may override (`sources`).
    """

    name: str
    title: str
    class_names: Mapping[str, str]
    settings: type[Settings]
    operations: Mapping[str, tuple[str, ...]]
    roles: tuple[str, ...]
    loader: str
    companions: tuple[str, ...] = ()
    fast: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, setting: str, operation: str) -> bool:
        """Whether `setting` is read by `operation`."""
        return self.settings.knobs()[setting].reads(operation, self.operations[operation])

    def events(self, operation: str, settings: Settings) -> int:
        """How many progress events one call of `operation` reports: a stage's step count (times its candidate
        count, for a prior that samples several), or one event for a stage without a step setting (encoding an
        image, say). The "invert" stage walks the steps of the stages after it backwards, and runs only when DDIM's η
        is given."""
        knobs = self.settings.knobs()
        stages = self.operations[operation]

        def steps(stage: str) -> int:
            counts = [getattr(settings, name) for name, knob in knobs.items() if knob.kind == "steps"
                      and knob.stage == stage]
            times = [getattr(settings, name) for name, knob in knobs.items() if knob.kind == "count"
                     and knob.stage == stage]
            return sum(counts) * (times[0] if times else 1) if counts else 1

        total = 0
        for k, stage in enumerate(stages):
            if stage == "invert":
                given = any(getattr(settings, name) is not None for name, knob in knobs.items()
                            if knob.stage == stage and knob.kind == "eta")
                total += sum(steps(later) for later in stages[k + 1:]) if given else 0
            else:
                total += steps(stage)
        return total

    def load(self, *args: Any, **kwargs: Any) -> Any:
        """Import the family's pipeline and load a model with it (see `loader`)."""
        module, _, function = self.loader.partition(":")
        load: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return load(*args, **kwargs)
