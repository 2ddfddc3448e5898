"""Choose the device and dtype a model runs in (CUDA in fp16, Apple MPS in fp16, otherwise the CPU in fp32), and how
many CPU threads torch's operators use."""

import os
import time
from pathlib import Path

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_THREADS = 1024
THREADS_ENV = "DALLE_THREADS"


def mps_available() -> bool:
    """Whether this torch build can run on Apple's Metal backend."""
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU. Asking for a backend this machine lacks is a `UsageError`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda': no CUDA device is available to this torch build", hint="info")
    if name == "mps" and not mps_available():
        raise UsageError("device 'mps': Apple's MPS backend is not available on this machine", hint="info")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r} (choose auto, cpu, cuda or mps)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA and MPS and fp32 on the CPU, where half precision is slow and inexact."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r} (choose auto, fp32, fp16 or bf16)")
    return DTYPES[name]


def conv_layout(device: torch.device) -> torch.memory_format:
    """The memory layout of a UNet's convolution weights on `device`: channels-last on the CPU, where oneDNN's
    convolutions run it faster at the same results to float rounding (benchmarks/pipeline_speed.py), and PyTorch's
    default elsewhere, where it has not been measured."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def image_batch(device: torch.device, batch: int) -> int:
    """How many images one call of a full-resolution network (the super-resolution UNets) takes on `device`: one
    on the CPU, where one image's feature maps already fill the cores, so a batch in one call adds memory (and
    cache misses) but no speed (measured in the README's "Speed and memory"), and every image then comes out the
    same whatever its batch; the whole `batch` elsewhere, where the batch is what fills the accelerator."""
    return 1 if device.type == "cpu" else batch


def threads(requested: int | None = None) -> int:
    """How many intra-op threads to run torch with: `requested`, else `$DALLE_THREADS`, else `idle_cores()`.

    Not all the cores by default: torch's OpenMP threads wait for each other at the end of every operator, so
    one thread that has no core (another program holds it) stalls them all for a scheduler time slice per
    operator, and a run on a busy machine can take many times longer with more threads than with fewer.
    Raises `UsageError` for a count that is not an integer from 1 to 1024."""
    raw: object = requested if requested is not None else os.environ.get(THREADS_ENV)
    if raw is None:
        return idle_cores()
    where = "threads" if requested is not None else THREADS_ENV
    try:
        count = int(str(raw).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_THREADS:
        raise UsageError(f"{where} must be an integer from 1 to {MAX_THREADS}, got {raw!r}")
    return count


def idle_cores(window_s: float = 0.1) -> int:
    """The cores this process may use that were idle over the last `window_s` seconds, at least 1: the cores it
    may run on (its affinity) less the busy time `/proc/stat` counts machine-wide in the window, rounded. Without
    `/proc/stat` (not Linux), the cores it may run on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    stat = Path("/proc/stat")
    if not stat.is_file():
        return usable

    def busy_idle() -> tuple[int, int]:
        fields = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, idle

    busy0, idle0 = busy_idle()
    time.sleep(window_s)
    busy1, idle1 = busy_idle()
    total = (busy1 - busy0) + (idle1 - idle0)
    cores = os.cpu_count() or usable
    busy_cores = cores * (busy1 - busy0) / total if total > 0 else 0.0
    return max(1, min(usable, round(cores - busy_cores)))
