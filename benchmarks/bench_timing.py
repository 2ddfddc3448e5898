"""Wall-clock time and peak accelerator memory of one call, the way benchmarks/gpu_check.py measures everything.

On CUDA the GPU is synchronised before the clock starts and after the call returns, and the peak is
`torch.cuda.max_memory_allocated()` since a `reset_peak_memory_stats()` taken just before the call, so a load and the
sampling that follows are measured separately. Elsewhere there is no resettable peak, so the peak is None.
`run_job` is the body every timed JOB.json script shares: the diffusers reference scripts
(benchmarks/karlo_reference.py, benchmarks/kandinsky_reference.py, through `run_reference_job`) and dalle's
(benchmarks/dalle_job.py).
"""

import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _runs(job: dict[str, Any]) -> list[tuple[int, int]]:
    """(batch size, images) of each timed run of a JOB.json: with `batches`, one call of b images (the first b
    prompts) at each batch size b; otherwise one run of every prompt, `batch` at a time."""
    if "batches" in job:
        return [(b, b) for b in job["batches"]]
    return [(job["batch"], len(job["prompts"]))]


Sampler = Callable[[Any, list[str], list[int], dict[str, Any]], torch.Tensor]


def run_job(job: dict[str, Any], load: Callable[[], Any], sample: Sampler, versions: dict[str, str]) -> None:
    """Time a text-to-image implementation as a JOB.json asks (see benchmarks/karlo_reference.py): the body of both
    diffusers reference scripts (through `run_reference_job`) and of dalle's (benchmarks/dalle_job.py).

    Sets torch's CPU threads to `job["threads"]` (the same for every implementation, for a fair CPU timing), measures
    `load()` (the model on its device), then, under inference mode, does each timed run of `_runs(job)` twice: with the
    `job["warmup"]` settings (kept out of the timing: first-call costs; a `warmup` of None skips it), then measured with
    `job["settings"]`. `sample(model, prompts, seeds, settings)` makes one batch, image i from seed i as dalle seeds it,
    as float32 [B, H, W, 3] in [0, 1] on the CPU. Writes the timed runs' images, concatenated in order, to
    `job["images"]` and the figures, with `versions`, to `job["result"]`: {"load_s", "load_peak_bytes",
    "resident_bytes", "sample_s", "sample_peak_bytes" (those of the last run), "runs" (per run: "batch", "images",
    "warmup_s", "warmup_peak_bytes", "sample_s", "sample_peak_bytes"), "rss_before_load_bytes", "peak_rss_bytes",
    "versions"}; the peaks in bytes are CUDA's (None elsewhere), the RSS figures the process's peak resident memory
    after the imports and at the end.
    """
    device = torch.device(job["device"])
    torch.set_num_threads(job["threads"])
    before = peak_rss_bytes()
    loaded = measure(load, device)
    model = loaded.value
    resident = allocated(device)
    prompts, seeds = job["prompts"], job["seeds"]

    def run(settings: dict[str, Any], batch: int, n: int) -> torch.Tensor:
        return torch.cat([sample(model, prompts[i:i + batch], seeds[i:i + batch], settings)
                          for i in range(0, n, batch)])

    runs, images = [], []
    with torch.inference_mode():
        for batch, n in _runs(job):
            warmed = measure(partial(run, job["warmup"], batch, n) if job["warmup"] is not None else list, device)
            sampled = measure(partial(run, job["settings"], batch, n), device)
            images.append(sampled.value)
            runs.append({"batch": batch, "images": n, "warmup_s": warmed.seconds,
                         "warmup_peak_bytes": warmed.peak_bytes, "sample_s": sampled.seconds,
                         "sample_peak_bytes": sampled.peak_bytes})
    peak = peak_rss_bytes()
    torch.save(torch.cat(images), job["images"])
    result = {"load_s": loaded.seconds, "load_peak_bytes": loaded.peak_bytes, "resident_bytes": resident,
              "sample_s": runs[-1]["sample_s"], "sample_peak_bytes": runs[-1]["sample_peak_bytes"], "runs": runs,
              "rss_before_load_bytes": before, "peak_rss_bytes": peak, "versions": versions}
    Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")


def run_reference_job(job: dict[str, Any], load: Callable[[], Any],
                      arguments: Callable[[dict[str, Any]], dict[str, Any]], versions: dict[str, str]) -> None:
    """Time a diffusers pipeline as a reference script's JOB.json asks, by `run_job`: `load()` gives the pipeline on
    its device, `arguments` turns dalle's settings into its keyword arguments, and each image gets its own
    `torch.Generator("cpu").manual_seed(seed)`, as dalle seeds it; images come as output_type="np" gives them."""

    def quiet() -> Any:
        pipe = load()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(pipe: Any, prompts: list[str], seeds: list[int], settings: dict[str, Any]) -> torch.Tensor:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return torch.from_numpy(pipe(prompt=prompts, generator=generators, output_type="np",
                                     **arguments(settings)).images)

    run_job(job, quiet, sample, versions)
