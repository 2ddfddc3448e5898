"""The latent the paper's manipulations work on (Ramesh et al. 2022, §3), and the prior's reranking (§2.2).

A picture is (z_i, x_T): its CLIP image embedding and the noise from which the decoder, run by DDIM at η = 0,
paints it back, found by DDIM inversion. A family with several decoding stages keeps one x_T per stage (Karlo's
decoder and super-resolution UNets). Every manipulation is a latent decoded by the family's `render`:
- a variation decodes a picture's own latent at η > 0;
- an interpolation decodes slerp(z_1, z_2, θ) from one fixed x_T, or from slerp(x_T1, x_T2, θ);
- a text diff decodes slerp(z_i, z_d, θ) from the picture's own x_T, with z_d = norm(z_t - z_t0) (`diff_target`).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.slerp import slerp, slerp_rows
from ..errors import UsageError


@dataclass(frozen=True)
class Latent:
    """A batch of B pictures as latents: `embeds` z_i [B, D], and `noises`, the x_T [B, ...] of each decoding stage
    in the family's order (empty for an embedding without a picture, such as a prompt's)."""

    embeds: Tensor
    noises: tuple[Tensor, ...] = ()

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def row(self, k: int) -> "Latent":
        """Picture k alone: a batch of one."""
        return Latent(self.embeds[k:k + 1], tuple(x[k:k + 1] for x in self.noises))

    def blend(self, other: "Latent", theta: float) -> "Latent":
        """slerp of both parts at θ (`diffusion.slerp`): the embeddings, and the noises when both have them."""
        noises = tuple(slerp_rows(a, b, theta) for a, b in zip(self.noises, other.noises)) if (
            self.noises and other.noises) else ()
        return Latent(slerp(self.embeds, other.embeds, theta), noises)


def stack(latents: list[Latent]) -> Latent:
    """One batch of the latents' pictures, in order; they must all have noises, or none."""
    if len({len(latent.noises) for latent in latents}) > 1:
        raise UsageError("cannot batch latents with and without noises")
    noises = tuple(torch.cat(parts) for parts in zip(*(latent.noises for latent in latents)))
    return Latent(torch.cat([latent.embeds for latent in latents]), noises)


def frame_thetas(frames: int) -> list[float]:
    """The θ of each of `frames` frames from one end to the other, both ends included: k / (frames - 1)."""
    if frames < 2:
        raise UsageError(f"an interpolation needs at least 2 frames, got {frames}")
    return [k / (frames - 1) for k in range(frames)]


def check_amount(theta: object) -> float:
    """A text diff's θ, a number in [0, 1], else `UsageError`."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 <= theta <= 1:
        raise UsageError(f"the amount must be a number from 0 to 1, got {theta!r}")
    return float(theta)


def diff_target(image_embeds: Tensor, to_embeds: Tensor, from_embeds: Tensor) -> Tensor:
    """The text diff's target z_d = norm(z_t - z_t0) (paper §3.3) for each picture, [B, D]. It is given each
    picture's own embedding length, so that slerp(z_i, z_d, θ) turns the embedding's direction towards the diff
    and keeps its length, which the decoder was trained on (unit-length z_d would shrink it)."""
    direction = to_embeds.float() - from_embeds.float()  # [B, D]
    if bool((direction.norm(dim=-1) == 0).any()):
        raise UsageError("the two captions of a text diff have the same embedding: there is no direction to move in")
    length = image_embeds.float().norm(dim=-1, keepdim=True)
    return (F.normalize(direction, dim=-1) * length).to(image_embeds.dtype)


def best_index(candidates: list[Tensor], text_embeds: Tensor) -> Tensor:
    """For each image, the index of the candidate image embedding [B, D] with the highest cosine similarity to its
    prompt's text embedding [B, D] (paper §2.2 keeps the higher dot product of two samples; the cosine, as in
    DALLE2-pytorch, does not favour a longer embedding). Ties go to the earlier candidate. [B] long."""
    stacked = torch.stack([c.float() for c in candidates])  # [K, B, D]
    similarity = F.cosine_similarity(stacked, text_embeds.float()[None], dim=-1)  # [K, B]
    return similarity.argmax(dim=0)


def best_of(candidates: list[Tensor], text_embeds: Tensor) -> Tensor:
    """The candidate embedding `best_index` picks for each image, [B, D]; a single candidate is returned as it is."""
    if len(candidates) == 1:
        return candidates[0]
    pick = best_index(candidates, text_embeds)
    return torch.stack(candidates)[pick, torch.arange(len(pick), device=pick.device)]


def noise_seeds(seed: int, count: int) -> list[int]:
    """The seeds of a fixed-noise path's `count` candidate noises: `seed` itself first, so that one candidate is the
    path of `seed` alone, then `count - 1` seeds drawn from a generator seeded with `seed` (rather than seed + 1,
    ..., which would give neighbouring seeds the same candidates)."""
    generator = torch.Generator().manual_seed(seed)
    return [seed, *torch.randint(0, 2**63 - 1, (count - 1,), generator=generator).tolist()]


def best_path(decoded: Tensor, embeds: Tensor, path: list[tuple[int, float]]) -> int:
    """The index of the candidate noise whose path goes most steadily through the inputs: `decoded` holds the CLIP
    embeddings of each candidate's frames, candidate by candidate [K * F, D]; `embeds` the inputs' [n, D]; `path`
    the (segment, θ) of the F frames (`path_frames`). Along segment s (its end frame included) a frame steps back
    when its cosine to input s rises above the frame before it, or its cosine to input s + 1 falls below it. The
    candidate with the least summed step back wins; among those that tie (in practice: that never step back), the
    one whose frames at the inputs come closest to them (highest summed cosine); then the earlier candidate."""
    count, n = len(path), embeds.shape[0]
    similarity = F.cosine_similarity(decoded.float().reshape(-1, count, 1, embeds.shape[1]),
                                     embeds.float()[None, None], dim=-1)  # [K, F, n]
    at_inputs = [k for k, (_, theta) in enumerate(path) if theta == 0.0] + [count - 1]  # the frame of input i
    back = similarity.new_zeros(similarity.shape[0])  # [K]
    for segment in range(n - 1):
        along = similarity[:, at_inputs[segment]:at_inputs[segment + 1] + 1]  # [K, the segment's frames, n]
        back += (along[:, 1:, segment] - along[:, :-1, segment]).clamp(min=0).sum(1)
        back += (along[:, :-1, segment + 1] - along[:, 1:, segment + 1]).clamp(min=0).sum(1)
    closeness = similarity[:, at_inputs, torch.arange(n)].sum(1)  # [K]
    return int(torch.where(back == back.min(), closeness, -torch.inf).argmax())


def path_frames(inputs: int, frames: int) -> list[tuple[int, float]]:
    """The (segment, θ) of every frame of a path through `inputs` inputs with `frames` frames per segment, each
    junction once: (inputs - 1)(frames - 1) + 1 frames."""
    if inputs < 2:
        raise UsageError(f"an interpolation needs at least two inputs, got {inputs}")
    thetas = frame_thetas(frames)
    path = [(segment, theta) for segment in range(inputs - 1) for theta in thetas[:-1]]
    return [*path, (inputs - 2, 1.0)]


def path_blends(latents: Sequence[Latent], frames: list[tuple[int, float]]) -> list[Latent]:
    """The latent of each (segment, θ) in `frames` (from `path_frames`): its segment's two inputs blended at θ."""
    return [latents[segment].blend(latents[segment + 1], theta) for segment, theta in frames]
