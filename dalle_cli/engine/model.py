"""What every family's loaded model shares: where it came from, its device and low-VRAM residency, the span of a
stage, the prompt's token limit, and the picture forms of the tensor operations."""

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from ..api import ModelInfo, ProgressCallback
from ..errors import OutOfMemoryError, UsageError
from ..images import to_pil
from ..settings import Settings
from ..sources import ModelSource
from .offload import Residency


class Model:
    """A loaded model: `parts` (the family's components, a tokenizer among them), its default settings, the device and
    dtype it runs in. `source`, when given, is where its parts come from, so a part needed later (an image encoder)
    can be fetched (announced through `on_notice`); `info` is then read from it, else `info` is given. A family's
    model subclasses this with its stages and its `generate_tensors` and `vary_tensors`."""

    def __init__(self, parts: Any, info: ModelInfo | None, defaults: Settings, device: torch.device,
                 dtype: torch.dtype, low_vram: bool = False, source: ModelSource | None = None,
                 on_notice: Callable[[str], None] | None = None) -> None:
        if info is None and source is None:
            raise ValueError("a model needs its info or its source")
        self.parts = parts
        self.defaults = defaults
        self.device = device
        self.dtype = dtype
        self.residency = Residency(device, low_vram)
        self._info = info
        self._source = source
        self._on_notice = on_notice
        self._loading = threading.Lock()  # parts loaded on first use are loaded once, whichever thread asks

    @property
    def info(self) -> ModelInfo:
        """Where the model came from, including the parts fetched so far."""
        return self._source.info() if self._source is not None else self._info  # type: ignore[return-value]

    @property
    def low_vram(self) -> bool:
        return self.residency.low_vram

    @property
    def max_tokens(self) -> int:
        """The longest prompt in tokens, start and end tokens included (77 for CLIP)."""
        return self.parts.tokenizer.model_max_length

    def prompt_overflow(self, prompt: str) -> str:
        """The part of `prompt` that truncation to `max_tokens` cuts off, or "" when the prompt fits."""
        return self.parts.tokenizer.encode([prompt]).overflow[0]

    @contextmanager
    def _running(self) -> Iterator[None]:
        """The span of a stage or an operation: no autograd, the accelerator taken in turn in low-VRAM mode, and an
        out-of-memory error reported as a `DalleError` with the "low_vram" hint."""
        try:
            with self.residency.call(), torch.inference_mode():
                yield
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(f"{self.device.type} ran out of memory", hint="low_vram") from None

    @staticmethod
    def _pair(inputs: list, seeds: list[int]) -> None:
        """Refuse a call whose inputs and seeds do not pair up, before any network runs."""
        if len(inputs) != len(seeds):
            raise UsageError(f"{len(inputs)} inputs but {len(seeds)} seeds: give one seed per image")
        if not inputs:
            raise UsageError("nothing to make: no prompts or images were given")

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                 progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One image for each (prompt, seed) pair, made in one batch (see the family's seed contract)."""
        return to_pil(self.generate_tensors(prompts, seeds, settings, progress=progress))

    def vary(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None, *,
             progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One variation for each (image, seed) pair."""
        return to_pil(self.vary_tensors(images, seeds, settings, progress=progress))

    def generate_tensors(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                         progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `generate`, the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        raise NotImplementedError

    def vary_tensors(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None, *,
                     progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `vary`, the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        raise NotImplementedError
