"""The shapes world: a procedural dataset of flat shapes with captions, and a model-free judge of generations.

`world` defines the world (palette, caption grammar, scene sampler, renderer); a tiny unCLIP model is trained on
its images. `evaluate` measures, without any model, whether an image shows what its caption states: colours,
shapes, sizes, positions and, for two objects, attribute binding and the spatial relation.

    rng = random.Random(0)
    caption, scene = sample_scene(rng)        # e.g. "a picture of a red circle left of a blue square"
    image = render(scene, size=64)            # PIL image
    score(caption, image)                     # {"row": "two objects", "color": True, ..., "all": True}
"""

from .evaluate import Blob, detect, score, summarize
from .world import (HELD_OUT, PALETTE, CaptionSpec, ObjectSpec, Scene, SceneObject, parse_caption, render, render_batch,
                    sample_scene)

__all__ = ["HELD_OUT", "PALETTE", "Blob", "CaptionSpec", "ObjectSpec", "Scene", "SceneObject", "detect",
           "parse_caption", "render", "render_batch", "sample_scene", "score", "summarize"]
