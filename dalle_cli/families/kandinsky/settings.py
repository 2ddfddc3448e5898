"""Kandinsky 2.2's sampling settings. The defaults are `KandinskyV22CombinedPipeline`'s (diffusers 0.42.1): 512 px,
prior 25 steps at guidance 4, decoder 100 steps at guidance 4, no negative prompt."""

from dataclasses import dataclass

from ...settings import Settings, candidates, eta, guidance, pixels, steps, strength, text


@dataclass(frozen=True)
class KandinskySettings(Settings):
    """Steps and guidance of the prior and the latent decoder, the image size, a negative prompt, the prior's
    candidates per image, the DDIM η of inverted variations and an edit's strength (image to image)."""

    prior_steps: int = steps(25, "prior", "Prior steps.")
    decoder_steps: int = steps(100, "decoder", "Decoder steps.")
    prior_guidance: float = guidance(4.0, "prior", "Prior guidance scale, 1 = off.")
    decoder_guidance: float = guidance(4.0, "decoder", "Decoder guidance scale, 1 = off.")
    width: int = pixels(512, "Image width in pixels, a multiple of 64.", 64, 2048, 64)
    height: int = pixels(512, "Image height in pixels, a multiple of 64.", 64, 2048, 64)
    negative_prompt: str = text("", "What the images should not show (the prior's unconditional prompt).", "prior")
    prior_candidates: int = candidates(1, "prior")
    eta: float | None = eta("invert")
    strength: float | None = strength("edit")
