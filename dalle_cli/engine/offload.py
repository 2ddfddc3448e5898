"""Residency: which networks hold their weights where while a stage runs.

Without low-VRAM or low-memory mode every network stays where it was loaded, and nothing here changes state. In
low-VRAM mode the networks wait on the CPU, and `hold` makes the running stage's networks the only ones on the
accelerator, so one stage's weights at most are ever there. In low-memory mode the networks were loaded lazily
(`checkpoint.load_weights(lazy=True)`): `hold` reads the running stage's weights from their files and frees the
stage's before, so one stage's weights at most are ever in memory, at the cost of reading them once per call. Either
way a call takes `lock` for its whole length, since one stage's room cannot hold two calls' stages: calls from
several threads then run one after the other, each with correct results.
"""

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from ..checkpoint import empty, fill


class Residency:
    """The networks a model holds on `device`; with `low_vram`, one stage's at a time on the accelerator; with
    `low_memory`, one stage's at a time in memory at all."""

    def __init__(self, device: torch.device, low_vram: bool, low_memory: bool = False) -> None:
        self.device = device
        self.low_vram = low_vram
        self.low_memory = low_memory
        self.lock = threading.RLock()
        self._held: list[torch.nn.Module] = []
        self._depth = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        """The span of one model call: in low-VRAM or low-memory mode it holds the lock, and the outermost call
        frees every network's room at its end (also after an error): the accelerator, or the memory."""
        if not (self.low_vram or self.low_memory):
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
        """Whether `module` is ready to run now (always, without low-VRAM or low-memory mode)."""
        return not (self.low_vram or self.low_memory) or any(module is held for held in self._held)

    def hold(self, *modules: torch.nn.Module) -> None:
        """In low-VRAM mode, make `modules` the only networks on the accelerator: the ones held before go back to the
        CPU first; in low-memory mode, the only ones with their weights read: the ones held before are freed first.
        Otherwise nothing moves. Call inside `call()`."""
        if not (self.low_vram or self.low_memory) or [id(m) for m in modules] == [id(m) for m in self._held]:
            return
        for module in self._held:
            if all(module is not kept for kept in modules):
                if self.low_memory:
                    empty(module)
                else:
                    module.to("cpu")
        if self.low_vram and self.device.type == "cuda":
            torch.cuda.empty_cache()
        for module in modules:
            if self.low_memory:
                fill(module)
            else:
                module.to(self.device)
        self._held = list(modules)
