"""The unCLIP family (Ramesh et al. 2022): Karlo and every model in its layout, the embedded `shapes` model too.

A CLIP text encoder, a diffusion prior to a CLIP image embedding, a text projection, a 64 px decoder and two
super-resolution UNets. `settings.py` holds its settings, `components.py` loads a folder, `pipeline.py` runs it.
"""

from ..family import Family
from .settings import FAST, UnCLIPSettings

FAMILY = Family(
    name="unclip",
    title="unCLIP (Karlo)",
    class_names={"UnCLIPPipeline": "model", "UnCLIPImageVariationPipeline": "model"},
    settings=UnCLIPSettings,
    operations={"generate": ("prior", "decoder", "super_res"), "vary": ("encode", "invert", "decoder", "super_res"),
                "interpolate": ("prior", "encode", "decoder", "super_res"),
                "text_diff": ("encode", "decoder", "super_res"), "edit": ("prior", "edit", "decoder", "super_res")},
    roles=("model", "image_encoder"),
    fast=FAST,
    loader="dalle_cli.families.unclip.pipeline:load_model",
)
