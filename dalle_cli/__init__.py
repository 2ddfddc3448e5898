"""dalle: DALL·E 2-style (unCLIP) image generation on your own machine.

    import dalle_cli
    model = dalle_cli.load("karlo")
    images = model.generate(["an astronaut riding a horse"], seeds=[42])

Importing this package is cheap: torch is imported only when a model is loaded.
"""

import warnings
from typing import Any, Callable

from .errors import DalleError

# torch warns when it is imported without NumPy installed. dalle never passes NumPy arrays to torch, and NumPy is no
# dependency of dalle, so the warning would only be noise before every first image.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

__version__ = "0.1.0"
__all__ = ["DalleError", "__version__", "load"]


def load(model: Any = "karlo", *, device: str = "auto", dtype: str = "auto", low_vram: bool = False,
         low_memory: bool = False, compile: bool = False, offline: bool = False,
         on_notice: Callable[[str], None] | None = None, parts: dict[str, str] | None = None) -> Any:
    """Load a model by registry alias, hub id `owner/name[@revision]` or local folder (or a `sources.ModelSource`
    that `sources.locate` resolved), downloading what loading needs on first use; an operation that needs more (the
    image encoder of Karlo's variations) fetches it when it first runs.

    `device` is auto|cpu|cuda|mps and `dtype` auto|fp32|fp16|bf16 (auto: fp16 on accelerators, fp32 on the CPU). With
    `low_vram`, networks wait on the CPU and only the running stage sits on the accelerator; with `low_memory`, they
    wait in their files and only the running stage's weights are read (a call then reads each stage's weights once,
    and a process holds one stage's at a time; not with `low_vram`). With `offline`, nothing is downloaded. With
    `compile`, the networks run through torch.compile (`Model.compile`: the first call of each input shape
    compiles). `on_notice` receives one line per download, before its first byte. `parts` names, by role, the model
    that provides a part of another model (`{"prior": "kandinsky-community/kandinsky-2-2-prior"}` for a Kandinsky
    2.2 decoder). Raises `DalleError`s.
    """
    from .sources import ModelSource, locate

    source = model if isinstance(model, ModelSource) else locate(str(model), offline=offline, on_notice=on_notice,
                                                                 parts=parts)
    loaded = source.family.load(source, device=device, dtype=dtype, low_vram=low_vram, low_memory=low_memory,
                                on_notice=on_notice)
    if compile:
        loaded.compile()
    return loaded
