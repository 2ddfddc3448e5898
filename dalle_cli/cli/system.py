"""What `dalle info` and `dalle models` show: versions, devices and the cache, and the registry with what is on disk."""

import importlib.metadata
import os
import platform
import sys
from typing import Any

from .. import __version__


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # a broken torch install is exactly what a bug report needs to show
        return {"torch": f"cannot import torch: {e}"}
    from ..devices import mps_available, threads

    found: dict[str, Any] = {"torch": torch.__version__, "cpu threads": threads(),
                             "cuda": torch.version.cuda or "not built with CUDA", "mps": mps_available()}
    if torch.cuda.is_available():
        for k in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(k)
            found[f"cuda:{k}"] = (f"{torch.cuda.get_device_name(k)}, {total / 2**30:.1f} GiB VRAM, "
                                  f"{free / 2**30:.1f} GiB free")
    else:
        found["cuda devices"] = 0
    return found


def system_info() -> dict[str, Any]:
    """Versions, devices, VRAM, the download cache and the registry, for bug reports."""
    from huggingface_hub import constants

    from ..registry import registry_path

    packages = ("huggingface_hub", "safetensors", "pillow", "tqdm", "typer", "rich")
    return {
        "dalle": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **{package: _version(package) for package in packages},
        **_devices(),
        "hub cache": constants.HF_HUB_CACHE,
        "hub endpoint": constants.ENDPOINT,
        "offline (HF_HUB_OFFLINE)": constants.is_offline_mode(),
        "token (HF_TOKEN)": "set" if os.environ.get("HF_TOKEN") else "not set",
        "registry": str(registry_path()),
    }


def model_rows() -> list[dict[str, Any]]:
    """One row per registry entry: alias, kind, family, where it comes from, its size, license, and what is on
    disk."""
    from ..hub import status
    from ..registry import load_registry

    rows = []
    for alias, entry in load_registry().items():
        state = status(entry)
        source = " + ".join(dict.fromkeys(f"{r.repo_id}@{r.revision}" for r in entry.repos.values())) or str(entry.path)
        local = entry.path is not None and state.state == "downloaded"  # a folder's size is read from the disk
        rows.append({
            "name": alias, "kind": entry.kind, "family": entry.family, "description": entry.description,
            "source": source, "size_bytes": state.size if local else entry.size_bytes,
            "size_exact": local or entry.size_exact, "license": entry.license,
            "state": state.state, "on_disk_bytes": state.size, "folder": str(state.folder) if state.folder else None,
            "image_encoder": entry.image_encoder,
        })
    return rows
