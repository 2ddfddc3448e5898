"""Wall-clock time and peak accelerator memory of one call, the way benchmarks/gpu_check.py measures everything.

On CUDA the GPU is synchronised before the clock starts and after the call returns, and the peak is
`torch.cuda.max_memory_allocated()` since a `reset_peak_memory_stats()` taken just before the call, so a load and the
sampling that follows are measured separately. Elsewhere there is no resettable peak, so the peak is None.
"""

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Measured:
    """What `measure` returns: the call's result, its seconds, and the peak bytes allocated (None off CUDA)."""

    value: Any
    seconds: float
    peak_bytes: int | None


def measure(fn: Callable[[], Any], device: torch.device) -> Measured:
    """Run `fn()` once and measure it (see the module docstring)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return Measured(value, seconds, torch.cuda.max_memory_allocated() if cuda else None)


def allocated(device: torch.device) -> int | None:
    """Bytes held by live tensors on `device` now (None off CUDA): weights left over from an earlier model show
    up here."""
    return torch.cuda.memory_allocated() if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Collect garbage and return cached blocks, so that the next measurement starts from what is really alive."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
