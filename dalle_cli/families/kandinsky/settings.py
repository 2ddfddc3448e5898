"""Kandinsky 2.2's sampling settings. The defaults are `KandinskyV22CombinedPipeline`'s (diffusers 0.42.1): 512 px,
prior 25 steps at guidance 4, decoder 100 steps at guidance 4, no negative prompt."""

from dataclasses import dataclass

from ...settings import (Settings, candidates, eta, guidance, inversion_guidance, noise_candidates, pixels, sampler,
                         steps, strength, text)


@dataclass(frozen=True)
class KandinskySettings(Settings):
    """Steps and guidance of the prior and the latent decoder, the image size, a negative prompt, the prior's
    candidates per image, the noises a fixed-noise interpolation tries, the DDIM η of inverted variations and the
    decoder guidance of inversions, an edit's strength (image to image) and the sampler of generations, noise
    variations and interpolations with fixed noise."""

    prior_steps: int = steps(25, "prior", "Prior steps.")
    decoder_steps: int = steps(100, "decoder", "Decoder steps.")
    prior_guidance: float = guidance(4.0, "prior", "Prior guidance scale, 1 = off.")
    decoder_guidance: float = guidance(4.0, "decoder", "Decoder guidance scale, 1 = off.")
    width: int = pixels(512, "Image width in pixels, a multiple of 64.", 64, 2048, 64)
    height: int = pixels(512, "Image height in pixels, a multiple of 64.", 64, 2048, 64)
    negative_prompt: str = text("", "What the images should not show (the prior's unconditional prompt).", "prior")
    prior_candidates: int = candidates(1, "prior")
    noise_candidates: int = noise_candidates(1)
    eta: float | None = eta("invert")
    inversion_guidance: float | None = inversion_guidance()
    strength: float | None = strength("edit")
    sampler: str | None = sampler(("generate", "vary", "interpolate"))


# Kandinsky 2.2's fast preset: DPM-Solver++(2M) at 10 + 25 steps, 35 network calls per image against the defaults'
# 125; not measured here (no real weights), see the README.
FAST = {"sampler": "dpmpp", "prior_steps": 10, "decoder_steps": 25}
