"""The denoiser ε̂(z, level): one network evaluation with classifier-free guidance, as ε.

The network call always uses one fixed batch layout, because the bits of the output depend
on the batch size and the sample's slot in it (SPEC §5). With guidance the batch is
diffusers' ``[uncond…, cond…]``: two halves of ``batch_size`` rows, the sample at ``slot``
of each. The per-sample math (CFG combine, v→ε) is ``guided_eps``, separate from the
batched call so that a batcher serving several jobs can reuse it.
"""

from __future__ import annotations

import torch

from .errors import InvalidParameter
from .grid import LevelGrid
from .models import DiffusionModel


def guided_eps(raw: torch.Tensor, z: torch.Tensor, level: int, grid: LevelGrid, guidance_scale: float) -> torch.Tensor:
    """ε̂ for one sample from its raw network rows ([uncond, cond] when guided, else [cond]).

    The guidance combine is diffusers' arithmetic in the network dtype; a v prediction is then
    converted with ε = α_i·v + σ_i·z in float64 (SPEC §1). Returns ε̂ in z's dtype and device.
    """
    rows = 2 if guidance_scale != 1 else 1
    if raw.shape[0] != rows:
        raise ValueError(f"expected {rows} raw row(s) for guidance scale {guidance_scale}, got {raw.shape[0]}")
    if rows == 2:
        uncond, cond = raw.chunk(2)
        raw = uncond + guidance_scale * (cond - uncond)
    out = raw.to(z.device)
    if grid.prediction_type == "v_prediction":
        out = grid.alpha(level) * out.to(torch.float64) + grid.sigma(level) * z.to(torch.float64)
    return out.to(z.dtype)


class Denoiser:
    """``denoiser(z, level) -> ε̂`` for one prompt, guidance scale and batch layout.

    ``z`` is a [1, C, h, w] state tensor (float64 or float32, any device); ``level`` is 1…N of
    ``grid``. Prompt embeddings are computed once; ``nfe`` counts network evaluations.
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
        if grid.prediction_type != model.prediction_type:
            raise InvalidParameter(
                f"the level grid is for {grid.prediction_type} but {model.name!r} predicts {model.prediction_type}"
            )
        batch_size = 1 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameter(f"batch size must be a positive integer, got {batch_size!r}")
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < batch_size:
            raise InvalidParameter(f"slot must be in 0…{batch_size - 1} for batch size {batch_size}, got {slot!r}")
        self.model = model
        self.grid = grid
        self.guidance_scale = float(guidance_scale)
        self.batch_size = batch_size
        self.slot = slot
        self.nfe = 0
        # Encoded separately, like diffusers: batching the text encoder could change the bits.
        halves = [model.encode_prompt([negative_prompt])] if self.guided else []
        halves.append(model.encode_prompt([prompt]))
        self.embeddings = torch.cat([h.expand(batch_size, -1, -1) for h in halves])

    @property
    def guided(self) -> bool:
        """True when the batch carries an unconditional half (guidance scale ≠ 1)."""
        return self.guidance_scale != 1

    @property
    def layout(self) -> dict[str, int]:
        """The network batch layout: ``batch_size`` rows per guidance half, the sample at ``slot``."""
        halves = 2 if self.guided else 1
        return {"batch_size": self.batch_size, "slot": self.slot, "halves": halves, "rows": halves * self.batch_size}

    def fingerprint(self) -> dict[str, str]:
        """The numerics fingerprint of this model and batch layout (SPEC §5)."""
        from .numerics import fingerprint

        return fingerprint(self.model, batch_size=self.batch_size, slot=self.slot)

    def raw(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """The sample's raw network rows from one batched call in the fixed layout."""
        model = self.model
        x = z.to(model.device, model.dtype)
        if self.batch_size > 1:
            padded = torch.zeros((self.batch_size, *x.shape[1:]), device=x.device, dtype=x.dtype)
            padded[self.slot] = x[0]
            x = padded
        if self.guided:
            x = torch.cat([x, x])
        out = model.predict(x, self.grid.timestep(level), self.embeddings)
        return out[self.slot :: self.batch_size]

    def __call__(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """ε̂(z, level) in z's dtype and device."""
        if z.ndim != 4 or z.shape[0] != 1:
            raise InvalidParameter(f"the denoiser takes one sample [1, C, h, w], got shape {tuple(z.shape)}")
        raw = self.raw(z, level)
        self.nfe += 1
        return guided_eps(raw, z, level, self.grid, self.guidance_scale)
