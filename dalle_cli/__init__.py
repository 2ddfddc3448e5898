"""dalle: DALL·E 2-style (unCLIP) image generation on your own machine.

    import dalle_cli
    model = dalle_cli.load("karlo")
    images = model.generate(["an astronaut riding a horse"], seeds=[42])

Importing this package is cheap: torch is imported only when a model is loaded.
"""

from .errors import DalleError

__version__ = "0.1.0"
__all__ = ["DalleError", "__version__", "load"]


def load(model: str = "karlo", **kwargs):  # type: ignore[no-untyped-def]
    """Load a model by registry alias, hub id or local folder; see `dalle_cli.pipelines.unclip.load`."""
    from .pipelines.unclip import load as _load

    return _load(model, **kwargs)
