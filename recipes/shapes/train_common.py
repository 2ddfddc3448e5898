"""What every training stage of the `shapes` recipe shares: its step/time budget, the optimiser, weight averaging,
initialisation, the diffusion forward process and the loss log.

A stage runs until it has taken its step budget or used its share of the recipe's time budget, whichever comes
first; the steps actually taken are recorded, and passing them back (`--steps`) replays the run exactly.
"""

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dalle_cli.diffusion.schedule import SchedulerConfig, noise_schedule

LOG = logging.getLogger("recipes.shapes.train")
LOG_EVERY = 25  # steps between loss lines


@dataclass
class StageBudget:
    """A stage's budget: at most `max_steps` optimiser steps and `seconds` of wall time (a stage always takes at
    least one step)."""

    name: str
    max_steps: int
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def running(self, step: int) -> bool:
        """Whether step number `step` (0-based) should still be taken."""
        if step >= self.max_steps:
            return False
        return step == 0 or time.monotonic() - self.started < self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class LossLog:
    """Averages a stage's named metrics over LOG_EVERY steps and logs them as one line."""

    def __init__(self, budget: StageBudget):
        self.budget = budget
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, **metrics: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if (step + 1) % LOG_EVERY == 0:
            self.flush(step)

    def flush(self, step: int) -> None:
        if not self.count:
            return
        values = " ".join(f"{k} {v / self.count:.4f}" for k, v in self.sums.items())
        LOG.info("%s step %d %s (%.0f s)", self.budget.name, step + 1, values, self.budget.elapsed())
        self.sums, self.count = {}, 0


def run_stage(budget: StageBudget, train_step: Callable[[], dict[str, float]]) -> None:
    """Call `train_step` (one optimiser step; it returns its metrics for the log) while `budget` allows, then record
    the number of steps taken as `budget.max_steps`, which is what `--steps` replays."""
    log = LossLog(budget)
    step = 0
    while budget.running(step):
        log.add(step, **train_step())
        step += 1
    log.flush(step - 1)
    budget.max_steps = step


class Optimizer:
    """AdamW with a linear warm-up to a constant learning rate and gradient-norm clipping at 1."""

    def __init__(self, params: list[nn.Parameter], lr: float, weight_decay: float, warmup: int = 100):
        self.params = params
        self.adam = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
        self.lr, self.warmup, self.steps = lr, warmup, 0

    def step(self, loss: Tensor) -> None:
        self.steps += 1
        for group in self.adam.param_groups:
            group["lr"] = self.lr * min(1.0, self.steps / self.warmup)
        self.adam.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.adam.step()


class EMA:
    """An exponential moving average of a module's weights, the copy that is shipped (Ho et al. 2020, App. B).
    The decay warms up as min(max_decay, (1 + n) / (10 + n)) so that short runs are not dominated by the init."""

    def __init__(self, module: nn.Module, max_decay: float = 0.999):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.max_decay, self.updates = max_decay, 0

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        decay = min(self.max_decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for average, current in zip(self.module.parameters(), source.parameters()):
            average.lerp_(current, 1.0 - decay)


def init_transformer(module: nn.Module) -> None:
    """CLIP-style initialisation (Radford et al. 2021): linear, convolution and embedding weights N(0, 0.02²), biases
    zero, layer norms identity. Our modules allocate some parameters uninitialised (CLIP's class embedding), so every
    parameter is set here."""
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.dim() == 1 and ("norm" in name or "layrnorm" in name):
            nn.init.ones_(param)
        else:
            nn.init.normal_(param, std=0.02)


class ForwardProcess:
    """The DDPM forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (Ho et al. 2020, eq. 4) on the
    squaredcos_cap_v2 schedule with 1000 training steps that every stage samples with."""

    def __init__(self) -> None:
        self.config = SchedulerConfig()
        self.alphas_cumprod = noise_schedule(self.config).alphas_cumprod  # [T]

    def noise(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(t [B], noise ε like x0, x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε) with t uniform over the training steps."""
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        alpha_bar = self.alphas_cumprod[t].view(b, *([1] * (x0.dim() - 1)))
        return t, eps, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def count_parameters(module: nn.Module) -> str:
    """A module's parameter count in millions, for the log."""
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def setup_logging(log_path: str) -> None:
    """Send the recipe's log lines to stdout and append them to `log_path`, each with a UTC time stamp (replacing
    the handlers of an earlier run in the same process)."""
    for handler in LOG.handlers[:]:
        LOG.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    formatter.converter = time.gmtime
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_path, encoding="utf-8")):
        handler.setFormatter(formatter)
        LOG.addHandler(handler)
