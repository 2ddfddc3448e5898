"""RePaint (Lugmayr et al. 2022): repainting a masked region with a diffusion model that was never trained to
inpaint, as pure functions over a denoiser (k-diffusion style).

    path = walk(len(steps), resample, jump)
    x = sample(denoise, x_T, steps, path, step, tables, noise_fn, known=x0, keep=keep)

At every step down the known region is re-imposed, noised to the step's level (RePaint eq. 8): the unknown region
comes from the model's ancestral step, the known one from q(x_{t'} | x_0). Harmonising the two then needs the model
to see them together for longer, so the walk goes back up `jump` steps, re-noising by q(x_t | x_{t'}), and comes
down again, `resample` times at every `jump`-th step (RePaint §4.2, its "jumps"). `resample` = 1 is the plain
sampler with the known region re-imposed.

Randomness is passed in as one stream per image, in the walk's order: for a step down, the step's noise (every step
but the last, `sampler.needs_noise`), then the known region's noise (every step but the last, which re-imposes the
clean picture); for a step up, one noise. `draws` counts them. This module never imports models.
"""

import itertools
from typing import Callable

from torch import Tensor

from ..errors import SchedulerError
from .sampler import Denoiser, NoiseFn, needs_noise
from .schedule import NoiseSchedule

Step = Callable[[Tensor, int, int, Tensor, Tensor | None], Tensor]  # (output, t, prev_t, x_t, noise) -> x_prev_t


def walk(count: int, resample: int, jump: int = 1) -> list[int]:
    """The positions the sampler visits over `count` steps: position i is x at `steps[i]` (0 is x_T), `count` the
    clean sample. It steps down one position at a time; on reaching a position i ≥ `jump` that is a multiple of
    `jump` from the last noisy one (count - 1), it goes back up `jump` positions, `resample` - 1 times there, each
    time stepping down again (RePaint's jump schedule, in step indices). Model calls: count + (resample - 1) x jump
    x (the number of such positions)."""
    if count < 1 or resample < 1 or jump < 1:
        raise SchedulerError(f"a RePaint walk needs count, resample and jump >= 1, got {count}, {resample}, {jump}")
    left = {count - 1 - k: resample - 1 for k in range(0, count - jump, jump)}
    path, i = [0], 0
    while i < count:
        i += 1
        path.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            for _ in range(jump):
                i -= 1
                path.append(i)
    return path


def _prev(steps: list[int], i: int) -> int:
    """The timestep after position i: the next one, or -1 (the clean sample) after the last."""
    return steps[i + 1] if i + 1 < len(steps) else -1


def draws(path: list[int], steps: list[int], known: bool) -> int:
    """How many noise tensors `sample` takes along `path`: one per noisy step down, one per step down but the last
    for the known region (when there is one), one per step up."""
    count = 0
    for a, b in zip(path, path[1:]):
        if b > a:
            count += needs_noise(steps[a]) + (known and _prev(steps, a) >= 0)
        else:
            count += 1
    return count


def renoise(x: Tensor, t_from: int, t_to: int, noise: Tensor, tables: NoiseSchedule) -> Tensor:
    """A sample of q(x_{t_to} | x_{t_from}) for t_to > t_from: √(ᾱ_to / ᾱ_from) x + √(1 − ᾱ_to / ᾱ_from) ε
    (DDPM eq. 2 over several steps); between adjacent timesteps the ratio is the stored 1 − β_to, as the
    ancestral step reads it (`sampler.step`)."""
    if t_to == t_from + 1:
        beta = tables.betas[t_to]
    else:
        beta = 1 - tables.alpha_bar(t_to) / tables.alpha_bar(t_from)
    return (1 - beta).sqrt() * x + beta.sqrt() * noise


def noised(x0: Tensor, t: int, noise: Tensor | None, tables: NoiseSchedule) -> Tensor:
    """q(x_t | x_0) for the given noise: √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4); t = -1 is x0 itself."""
    if t < 0:
        return x0
    alpha_bar = tables.alpha_bar(t)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def sample(denoise: Denoiser, x: Tensor, steps: list[int], path: list[int], step: Step, tables: NoiseSchedule,
           noise_fn: NoiseFn, known: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """Walk `path` (from `walk`, over `steps`, the stage's descending timesteps ending at 0) from x at steps[path[0]]
    and return the clean sample.

    A step down from position i calls `denoise(x, steps[i], i)` and `step` to the next timestep; with a `known`
    picture x_0 (x's shape) and `keep` (1 where the picture is kept, 0 where it is repainted; [B, 1, H, W] or x's
    shape), the kept region is then replaced by x_0 noised to that timestep. A step up re-noises (`renoise`).
    `noise_fn(j)` gives the j-th standard-normal tensor of x's shape, in the order `draws` counts."""
    if (known is None) != (keep is None):
        raise SchedulerError("RePaint needs both the known picture and its keep mask, or neither")
    drawn = itertools.count()  # the index of the next noise tensor
    for a, b in zip(path, path[1:]):
        if b < a:
            x = renoise(x, steps[a], steps[b], noise_fn(next(drawn)), tables)  # a < len(steps): never from clean
            continue
        t, prev = steps[a], _prev(steps, a)
        output = denoise(x, t, a)
        x = step(output, t, prev, x, noise_fn(next(drawn)) if needs_noise(t) else None)
        if known is not None:
            level = noised(known, prev, noise_fn(next(drawn)) if prev >= 0 else None, tables)
            x = keep * level + (1 - keep) * x
    return x
