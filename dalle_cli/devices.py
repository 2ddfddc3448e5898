"""Choose the device and dtype a model runs in: CUDA in fp16, Apple MPS in fp16, otherwise the CPU in fp32."""

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
