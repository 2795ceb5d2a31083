"""The level grid (docs/numerics.md#level-grid): the noise levels a sampler walks, taken from a diffusers scheduler.

Level 0 is the clean end; levels 1…N are the scheduler's timesteps sorted ascending.
All coefficients are kept in float64.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameter

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class LevelGrid:
    """Timesteps and ᾱ for levels 0…N. ``timesteps[0]`` is ``None`` (the clean end has no timestep)."""

    timesteps: tuple[int | None, ...]
    alphas_cumprod: tuple[float, ...]
    prediction_type: str = "epsilon"

    @property
    def steps(self) -> int:
        """N, the number of inference steps (the highest level)."""
        return len(self.timesteps) - 1

    def timestep(self, i: int) -> int:
        """The network timestep of level i ≥ 1."""
        if not 1 <= i <= self.steps:
            raise IndexError(f"level {i} has no timestep (levels 1…{self.steps})")
        return self.timesteps[i]  # type: ignore[return-value]

    def level(self, timestep: int) -> int:
        """The level 1…N whose network timestep is ``timestep`` (what a diffusers pipeline hands a scheduler)."""
        try:
            return self.timesteps.index(int(timestep), 1)
        except ValueError:
            raise InvalidParameter(f"timestep {int(timestep)} is not on this grid ({self.timesteps[1:]})") from None

    def alpha(self, i: int) -> float:
        """α_i = sqrt(ᾱ_i)."""
        return math.sqrt(self.alphas_cumprod[i])

    def sigma(self, i: int) -> float:
        """σ_i = sqrt(1 − ᾱ_i)."""
        return math.sqrt(1.0 - self.alphas_cumprod[i])

    def ddim_coefficients(self, i: int, j: int) -> tuple[float, float]:
        """(a, b) with D(z_i, ε; i→j) = a·z_i + b·ε, in float64 (docs/numerics.md#ddim-map)."""
        a = self.alpha(j) / self.alpha(i)
        return a, self.sigma(j) - a * self.sigma(i)

    @classmethod
    def from_scheduler(cls, scheduler: Any, steps: int) -> LevelGrid:
        """The grid of ``steps`` levels exactly as ``scheduler.set_timesteps(steps)`` produces them.

        ``scheduler`` is a diffusers DDIM-compatible scheduler (or anything with the same config);
        it is not modified.
        """
        config = scheduler.config
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidParameter(f"steps must be a positive integer, got {steps!r}")
        train_steps = int(config.num_train_timesteps)
        if steps > train_steps:
            raise InvalidParameter(f"steps must be at most {train_steps} for this model, got {steps}")
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise InvalidParameter(f"prediction type {prediction_type!r} is not supported (use {PREDICTION_TYPES})")

        from diffusers import DDIMScheduler

        # Only DDIM's own keys: other schedulers' (SDXL's Euler, BDIAScheduler's gamma) would be warned about.
        known = inspect.signature(DDIMScheduler.__init__).parameters
        ddim = DDIMScheduler.from_config({k: v for k, v in dict(config).items() if k in known or k.startswith("_")})
        ddim.set_timesteps(steps)
        ts = sorted(int(t) for t in ddim.timesteps)
        if ts[-1] >= train_steps or ts[0] < 0:
            raise InvalidParameter(
                f"steps={steps} puts a timestep at {ts[-1]} with {config.get('timestep_spacing', 'leading')} spacing, "
                f"outside this model's 0…{train_steps - 1}: use fewer steps"
            )
        table = ddim.alphas_cumprod.double()
        final = float(ddim.final_alpha_cumprod)
        return cls(
            timesteps=(None, *ts),
            alphas_cumprod=(final, *(float(table[t]) for t in ts)),
            prediction_type=prediction_type,
        )
