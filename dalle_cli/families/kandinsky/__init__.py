"""Kandinsky 2.2 (Razzhigaev et al. 2023): an unCLIP in OpenCLIP ViT-bigG/14's embedding space, with a latent decoder.

Two repos make one model: the prior repo holds the bigG text and image towers, the prior and its scheduler; the
decoder repo holds a UNet conditioned on the image embedding and MoVQ, which turns its 4-channel latents into pixels.
Its parts: the "decoder" (the model itself), the "prior", and the prior repo's "image_encoder", a part of its own so
that it is fetched (3.7 GB) only when an operation needs it. `settings.py` holds its settings, `components.py` loads
the folders, `pipeline.py` runs them.
"""

from ..family import Family
from .settings import FAST, KandinskySettings

FAMILY = Family(
    name="kandinsky",
    title="Kandinsky 2.2",
    class_names={"KandinskyV22Pipeline": "decoder", "KandinskyV22InpaintPipeline": "decoder",
                 "KandinskyV22PriorPipeline": "prior"},
    settings=KandinskySettings,
    operations={"generate": ("prior", "decoder"), "vary": ("encode", "invert", "decoder"),
                "interpolate": ("prior", "encode", "decoder"), "text_diff": ("encode", "decoder"),
                "edit": ("prior", "edit", "decoder")},
    roles=("decoder", "prior", "image_encoder"),
    fast=FAST,
    loader="dalle_cli.families.kandinsky.pipeline:load_model",
    companions=("prior",),
)
