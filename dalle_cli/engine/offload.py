"""Low-VRAM residency: which networks sit on the accelerator while a stage runs.

Without low-VRAM mode every network stays where it was loaded, and nothing here changes state. In low-VRAM mode the
networks wait on the CPU, and `hold` makes the running stage's networks the only ones on the accelerator, so one
stage's weights at most are ever there. One accelerator cannot hold two stages at once, so in that mode a call takes
`lock` for its whole length: calls from several threads then run one after the other, each with correct results.
"""

import threading
from contextlib import contextmanager
from typing import Iterator

import torch


class Residency:
    """The networks a model holds on `device`; with `low_vram`, one stage's at a time."""

    def __init__(self, device: torch.device, low_vram: bool) -> None:
        self.device = device
        self.low_vram = low_vram
        self.lock = threading.RLock()
        self._held: list[torch.nn.Module] = []
        self._depth = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        """The span of one model call: in low-VRAM mode it holds the lock, and the outermost call sends every network
        back to the CPU at its end (also after an error), so the accelerator is free between calls."""
        if not self.low_vram:
            yield
            return
        with self.lock:
            self._depth += 1  # an operation's stages are calls too: only the outermost one frees the accelerator
            try:
                yield
            finally:
                self._depth -= 1
                if not self._depth:
                    self.hold()

    def holds(self, module: torch.nn.Module) -> bool:
        """Whether `module` is on the accelerator now (always, without low-VRAM mode)."""
        return not self.low_vram or any(module is held for held in self._held)

    def hold(self, *modules: torch.nn.Module) -> None:
        """In low-VRAM mode, make `modules` the only networks on the accelerator: the ones held before go back to the
        CPU first. Without low-VRAM mode, nothing moves. Call inside `call()`."""
        if not self.low_vram or [id(m) for m in modules] == [id(m) for m in self._held]:
            return
        for module in self._held:
            if all(module is not kept for kept in modules):
                module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for module in modules:
            module.to(self.device)
        self._held = list(modules)
