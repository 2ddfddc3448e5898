"""Tensors that depend only on a checkpoint, computed once and kept on disk beside dalle's other state.

The folder is `$DALLE_CACHE`, else `$XDG_CACHE_HOME/dalle`, else `~/.cache/dalle`. Each tensor file is named by a
digest of its key (which names the checkpoint and its revision), written atomically, and read back on later runs,
so, say, Kandinsky's zero-image embedding never needs its 3.7 GB image encoder again.
"""

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file


def cache_root() -> Path:
    """The folder dalle keeps computed tensors in (see the module docstring)."""
    if os.environ.get("DALLE_CACHE"):
        return Path(os.environ["DALLE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dalle"


def cached_tensor(kind: str, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor `compute()` gives for `key`, from the cache when an earlier run stored it (on the CPU, in the dtype
    it was computed in). A cache that cannot be written costs only the recomputation next time."""
    path = cache_root() / kind / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".safetensors")
    if path.is_file():
        try:
            return load_file(str(path))["tensor"]
        except Exception:  # a damaged cache file: computed again below and replaced
            pass
    tensor = compute().detach().cpu().contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"tensor": tensor}, str(temporary), metadata={"key": key})
        os.replace(temporary, path)
    except OSError:
        pass
    return tensor
