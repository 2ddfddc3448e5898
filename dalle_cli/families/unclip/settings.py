"""The unCLIP family's sampling settings. The defaults are Karlo's (its model card and diffusers' UnCLIPPipeline)."""

from dataclasses import dataclass

from ...settings import Settings, candidates, eta, guidance, steps, strength


@dataclass(frozen=True)
class UnCLIPSettings(Settings):
    """Steps and guidance of the prior, the decoder and the super-resolution stage (which is never guided); the
    prior's candidates per image; the DDIM η of inverted variations; and an edit's strength (image to image) and its
    RePaint resamplings (masked edits)."""

    prior_steps: int = steps(25, "prior", "Prior steps.")
    decoder_steps: int = steps(25, "decoder", "Decoder steps.")
    sr_steps: int = steps(7, "super_res", "Super-resolution steps.")
    prior_guidance: float = guidance(4.0, "prior", "Prior guidance scale, 1 = off.")
    decoder_guidance: float = guidance(8.0, "decoder", "Decoder guidance scale, 1 = off.")
    prior_candidates: int = candidates(1, "prior")
    eta: float | None = eta("invert")
    strength: float | None = strength("edit")
    resample: int = candidates(2, "edit", "Masked edits: RePaint's resamplings of each decoder step (1: none).")
