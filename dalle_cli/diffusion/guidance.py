"""Classifier-free guidance (Ho & Salimans, 2022) as the unCLIP pipelines batch it: one model call on the doubled
batch [unconditional; conditional], then uncond + scale · (cond - uncond). Pure functions; never imports models."""

from typing import Callable

import torch
from torch import Tensor

from ..errors import SchedulerError

Model = Callable[[Tensor, int], Tensor]  # (x_t for the doubled batch, t) -> raw model output


def guide(model_output: Tensor, scale: float, learned_variance: bool = False) -> Tensor:
    """Classifier-free guidance (Ho & Salimans, 2022): uncond + scale · (cond - uncond), as the unCLIP pipelines do.

    `model_output` is the output for the doubled batch [unconditional; conditional], shape (2B, ...); returns (B, ...).
    - prior (`learned_variance=False`): the whole predicted image embedding is guided.
    - decoder (`learned_variance=True`): the output holds 2C channels, [ε | variance values]; only ε is guided and
      the conditional half's variance values are kept, so the result is [guided ε | conditional variance].
    The formula is applied for every scale, 1 included: the reference runs the doubled batch for both the prior and
    the decoder as soon as either stage's scale is above 1, and then a stage with scale 1 computes
    uncond + 1 · (cond - uncond), which is not bit-equal to cond. Whether to double the batch is the caller's choice.
    """
    if model_output.shape[0] % 2:
        raise SchedulerError(f"guidance needs an [unconditional; conditional] batch, got batch {model_output.shape[0]}")
    uncond, cond = model_output.chunk(2)  # (B, ...) each
    if not learned_variance:
        return uncond + scale * (cond - uncond)
    channels = cond.shape[1] // 2
    eps_uncond, _ = uncond.split(channels, dim=1)  # (B, C, H, W)
    eps_cond, variance_values = cond.split(channels, dim=1)
    return torch.cat([eps_uncond + scale * (eps_cond - eps_uncond), variance_values], dim=1)  # (B, 2C, H, W)


def guided(model: Model, scale: float, learned_variance: bool = False) -> Model:
    """A model for the plain batch x [B, ...] that runs `model` once on the doubled batch [x; x], whose conditioning
    the caller laid out as [unconditional; conditional], and returns `guide(output, scale, learned_variance)`."""

    def run(x: Tensor, t: int) -> Tensor:
        return guide(model(torch.cat([x, x]), t), scale, learned_variance)

    return run
