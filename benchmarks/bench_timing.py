"""Wall-clock time and peak accelerator memory of one call, the way benchmarks/gpu_check.py measures everything.

On CUDA the GPU is synchronised before the clock starts and after the call returns, and the peak is
`torch.cuda.max_memory_allocated()` since a `reset_peak_memory_stats()` taken just before the call, so a load and the
sampling that follows are measured separately. Elsewhere there is no resettable peak, so the peak is None.
`run_reference_job` is the body both diffusers reference scripts (benchmarks/karlo_reference.py,
benchmarks/kandinsky_reference.py) share.
"""

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the --dtype names


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


def run_reference_job(job: dict[str, Any], load: Callable[[], Any],
                      arguments: Callable[[dict[str, Any]], dict[str, Any]], versions: dict[str, str]) -> None:
    """Time a diffusers pipeline as a reference script's JOB.json asks (see benchmarks/karlo_reference.py).

    Sets torch's CPU threads to `job["threads"]` (as many as dalle had, for a fair CPU timing), measures `load()` (the
    pipeline on its device), then, under inference mode, runs every prompt `job["batch"]` at a time with the warm-up
    settings and then, measured, with the sampling settings (`arguments` turns dalle's settings into the pipeline's
    keyword arguments), each image with its own `torch.Generator("cpu").manual_seed(seed)`, as dalle seeds it.
    Writes the images (float32 [N, H, W, 3] in [0, 1], output_type="np") to `job["images"]` and the figures, with
    `versions`, to `job["result"]`.
    """
    device = torch.device(job["device"])
    torch.set_num_threads(job["threads"])
    loaded = measure(load, device)
    pipe = loaded.value
    pipe.set_progress_bar_config(disable=True)
    resident = allocated(device)
    prompts, seeds, batch = job["prompts"], job["seeds"], job["batch"]

    def run(settings: dict[str, Any]) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), batch):
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[i:i + batch]]
            out.append(torch.from_numpy(pipe(prompt=prompts[i:i + batch], generator=generators, output_type="np",
                                              **settings).images))
        return torch.cat(out)

    with torch.inference_mode():
        run(arguments(job["warmup"]))
        sampled = measure(lambda: run(arguments(job["settings"])), device)
    torch.save(sampled.value, job["images"])
    result = {"load_s": loaded.seconds, "load_peak_bytes": loaded.peak_bytes, "resident_bytes": resident,
              "sample_s": sampled.seconds, "sample_peak_bytes": sampled.peak_bytes, "versions": versions}
    Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")
