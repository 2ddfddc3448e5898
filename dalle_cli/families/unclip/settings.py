"""The unCLIP family's sampling settings. The defaults are Karlo's (its model card and diffusers' UnCLIPPipeline)."""

from dataclasses import dataclass

from ...settings import Settings, candidates, eta, guidance, sampler, steps, strength


@dataclass(frozen=True)
class UnCLIPSettings(Settings):
    """Steps and guidance of the prior, the decoder and the super-resolution stage (which is never guided); the
    prior's candidates per image; the DDIM η of inverted variations; an edit's strength (image to image) and its
    RePaint resamplings (masked edits); and the sampler of generations, noise variations and interpolations with
    fixed noise."""

    prior_steps: int = steps(25, "prior", "Prior steps.")
    decoder_steps: int = steps(25, "decoder", "Decoder steps.")
    sr_steps: int = steps(7, "super_res", "Super-resolution steps.")
    prior_guidance: float = guidance(4.0, "prior", "Prior guidance scale, 1 = off.")
    decoder_guidance: float = guidance(8.0, "decoder", "Decoder guidance scale, 1 = off.")
    prior_candidates: int = candidates(1, "prior")
    eta: float | None = eta("invert")
    strength: float | None = strength("edit")
    resample: int = candidates(2, "edit", "Masked edits: RePaint's resamplings of each decoder step (1: none).")
    sampler: str | None = sampler(("generate", "vary", "interpolate"))


# The fast preset of Karlo-layout models without their own: the stages' own ancestral samplers at 12 + 12 + 4 steps,
# 28 network calls per image against the defaults' 57. Karlo's weights cannot be run here; this is the shapes model's
# measured preset (its dalle.json: the deterministic samplers lost positions and objects there at every budget
# tried) at about the same fraction of Karlo's steps; see the README.
FAST = {"sampler": "ddpm", "prior_steps": 12, "decoder_steps": 12, "sr_steps": 4}
