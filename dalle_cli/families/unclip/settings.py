"""The unCLIP family's sampling settings. The defaults are Karlo's (its model card and diffusers' UnCLIPPipeline)."""

from dataclasses import dataclass

from ...settings import (Settings, candidates, eta, guidance, inversion_guidance, noise_candidates, sampler, steps,
                         strength)


@dataclass(frozen=True)
class UnCLIPSettings(Settings):
    """Steps and guidance of the prior, the decoder and the super-resolution stage (which is never guided); the
    prior's candidates per image; the noises a fixed-noise interpolation tries; the DDIM η of inverted variations
    and the decoder guidance of inversions; an edit's strength (image to image) and its RePaint resamplings (masked
    edits); and the sampler of generations, noise variations and interpolations with fixed noise."""

    prior_steps: int = steps(25, "prior", "Prior steps.")
    decoder_steps: int = steps(25, "decoder", "Decoder steps.")
    sr_steps: int = steps(7, "super_res", "Super-resolution steps.")
    prior_guidance: float = guidance(4.0, "prior", "Prior guidance scale, 1 = off.")
    decoder_guidance: float = guidance(8.0, "decoder", "Decoder guidance scale, 1 = off.")
    prior_candidates: int = candidates(1, "prior")
    noise_candidates: int = noise_candidates(1)
    eta: float | None = eta("invert")
    inversion_guidance: float | None = inversion_guidance()
    strength: float | None = strength("edit")
    resample: int = candidates(2, "edit", "Masked edits: RePaint's resamplings of each decoder step (1: none).")
    sampler: str | None = sampler(("generate", "vary", "interpolate"))


# The fast preset of Karlo-layout models without their own: the stages' own ancestral samplers at 5 + 18 + 4 steps,
# 27 network calls per image against the defaults' 57. Karlo's weights cannot be run here; on the shapes model, which
# has Karlo's design, the prior lost nothing at 3 of 15 steps, the decoder's object counts fell below 11 of 15, and the
# deterministic samplers lost positions and objects at every budget tried. Its preset (its dalle.json, 3 + 13 + 2)
# runs its x_0-predicting super-resolution stage at 2 steps, which scored as 4 did; Karlo's predicts ε, which few
# ancestral steps leave noisier, so it keeps 4. See the README.
FAST = {"sampler": "ddpm", "prior_steps": 5, "decoder_steps": 18, "sr_steps": 4}
