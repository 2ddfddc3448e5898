"""Spherical interpolation of embeddings and noises, as the manipulations of DALL·E 2 use it (Ramesh et al. 2022, §3:
slerp(z_i1, z_i2, θ) for interpolations, slerp(z_i, z_d, θ) for text diffs, slerp(x_T1, x_T2, θ) for inverted
noise). Pure functions; never imports models.

The vectors are the last dimension of an embedding [..., D], or a whole sample [B, C, H, W] flattened per row
(`per_row`). CLIP's embeddings as the unCLIP decoders take them are not unit length (Karlo's prior un-normalises
its output with CLIP's statistics, and the image encoders' projections are raw), so the interpolation moves the
direction along the great circle and the length linearly:

    slerp(a, b, θ) = ((1 - θ) |a| + θ |b|) · (sin((1 - θ) Ω) â + sin(θ Ω) b̂) / sin Ω,   cos Ω = â · b̂

For unit vectors this is the textbook slerp (the length stays 1); the angle from a grows linearly, θ Ω.
"""

import torch
from torch import Tensor

from ..errors import SchedulerError

PARALLEL = 1e-4  # below this sin Ω the directions are one (or opposite): the formula is 0 / 0 there


def slerp(a: Tensor, b: Tensor, theta: float) -> Tensor:
    """Interpolate the vectors of the last dimension of `a` and `b` (same shape [..., D], any float dtype) at
    θ in [0, 1]; θ = 0 returns `a` and θ = 1 returns `b` exactly. Computed in float32 (or float64 for float64
    input) and returned in a's dtype. Directions that are (nearly) opposite have no unique great circle: refused
    with `SchedulerError`, as is a zero vector, which has no direction."""
    if a.shape != b.shape:
        raise SchedulerError(f"slerp needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0 <= theta <= 1:
        raise SchedulerError(f"slerp's theta must be between 0 and 1, got {theta}")
    if theta == 0:
        return a.clone()
    if theta == 1:
        return b.clone()
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.to(work), b.to(work)
    x_norm, y_norm = x.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)  # [..., 1]
    if bool((x_norm == 0).any() or (y_norm == 0).any()):
        raise SchedulerError("slerp cannot interpolate a zero vector: it has no direction")
    u, v = x / x_norm, y / y_norm
    cos = (u * v).sum(dim=-1, keepdim=True).clamp(-1, 1)
    sin = (v - cos * u).norm(dim=-1, keepdim=True)  # exact near 0 and π, where arccos loses its digits
    omega = torch.atan2(sin, cos)
    if bool(((cos < 0) & (sin < PARALLEL)).any()):
        raise SchedulerError("slerp cannot interpolate opposite directions: no single great circle joins them")
    parallel = sin < PARALLEL
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    direction = torch.where(parallel, (1 - theta) * u + theta * v,
                            (torch.sin((1 - theta) * omega) * u + torch.sin(theta * omega) * v) / safe)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return (((1 - theta) * x_norm + theta * y_norm) * direction).to(a.dtype)


def slerp_rows(a: Tensor, b: Tensor, theta: float) -> Tensor:
    """`slerp` of whole samples [B, ...], each row flattened to one vector (DDIM noises x_T [B, C, H, W])."""
    return slerp(a.flatten(1), b.flatten(1), theta).view_as(a)


def angle(a: Tensor, b: Tensor) -> Tensor:
    """The angle Ω (radians, float32) between the vectors of the last dimension of `a` and `b`: [...]."""
    x, y = a.float(), b.float()
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    return torch.arccos(cos.clamp(-1, 1))
