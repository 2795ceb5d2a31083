"""The denoiser ε̂(z, level): one prompt, one guidance scale, one batch layout, as a callable.

``Denoiser`` is the single-request face of ``bdia.batching``: each call is ``evaluate`` on one
request, so ε̂ computed here and ε̂ computed side by side with other jobs in a worker share one
code path and, in the same layout, the same bits (docs/exactness.md). Tests and notebooks use it
to look at ε̂ directly; the operations drive walks through ``bdia.batching`` instead.
"""

from __future__ import annotations

import torch

from .batching import Conditioning, Layout, Request, conditioning, evaluate, guided_eps
from .errors import InvalidParameter
from .grid import LevelGrid
from .models import DiffusionModel
from .sampling import Progress

__all__ = ["Denoiser", "guided_eps"]


class Denoiser:
    """``denoiser(z, level) -> ε̂`` for one prompt, guidance scale and batch layout.

    ``z`` is a [1, C, h, w] state tensor (float64 or float32, any device); ``level`` is 1…N of
    ``grid``. With guidance the network batch is diffusers' ``[uncond…, cond…]``, ``batch_size``
    rows per half with the sample at ``slot``. Prompt embeddings are computed once; ``nfe``
    counts network evaluations.
    """

    def __init__(
        self,
        model: DiffusionModel,
        grid: LevelGrid,
        prompt: str,
        *,
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
        batch_size: int | None = None,
        slot: int = 0,
    ) -> None:
        self.model = model
        self.where = Layout(1 if batch_size is None else batch_size, slot).check()
        self.cond: Conditioning = conditioning(model, grid, prompt, guidance_scale, negative_prompt)
        self.nfe = 0

    @property
    def grid(self) -> LevelGrid:
        return self.cond.grid

    @property
    def layout(self) -> dict[str, int]:
        """The network batch layout: ``batch_size`` rows per guidance half, the sample at ``slot``."""
        halves = self.cond.halves
        batch_size, slot = self.where
        return {"batch_size": batch_size, "slot": slot, "halves": halves, "rows": halves * batch_size}

    def fingerprint(self) -> dict[str, str]:
        """The numerics fingerprint of this model and batch layout (docs/exactness.md)."""
        from .numerics import fingerprint

        return fingerprint(self.model, batch_size=self.where.batch_size, slot=self.where.slot)

    def __call__(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """ε̂(z, level) in z's dtype and device."""
        if z.ndim != 4 or z.shape[0] != 1:
            raise InvalidParameter(f"the denoiser takes one sample [1, C, h, w], got shape {tuple(z.shape)}")
        self.nfe += 1
        (eps,) = evaluate(self.model, [Request(z, level, self.cond, self.where, Progress(self.nfe, 0, "eps"))])
        return eps
