"""Samplers and inversions over a level grid (docs/numerics.md).

Each method is a generator function, a *walk*: it yields ``(z, level)`` whenever it needs
ε_θ(z, t_level), receives ε through ``send``, and returns its result. A walk owns no model and
no loop: ``bdia.batching`` binds it to a model's conditioning and drives it, alone or side by side
with other walks sharing network calls.

States live on a *lattice*: ``FloatLattice`` keeps them in a float dtype, ``FixedPoint``
keeps integers Z = round(z·2^k) so that the γ = 1 BDIA round trip is bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

import torch

from .errors import InvalidParameter
from .grid import LevelGrid

Tensor = torch.Tensor
T = TypeVar("T")
#: A walk yields (state, level) requests and receives ε for each.
Walk = Generator[tuple[Tensor, int], Tensor, T]
#: Called with (level, state) for every new state a sampler makes; returns the state to keep.
Guide = Callable[[int, Tensor], Tensor]


class Progress(NamedTuple):
    step: int
    total: int
    stage: str


def ddim(z: Tensor, eps: Tensor, grid: LevelGrid, i: int, j: int) -> Tensor:
    """The DDIM map D(z_i, ε; i→j) = α_j·(z_i − σ_i·ε)/α_i + σ_j·ε, coefficients in float64.

    On a flow-matching grid (``bdia.flow.FlowGrid``) ε is the velocity v and this is the Euler map
    z_i + (σ_j − σ_i)·v: every walk below runs on either grid unchanged."""
    a, b = grid.ddim_coefficients(i, j)
    return a * z + b * eps


# --- lattices -------------------------------------------------------------------------------


class Lattice(Protocol):
    def encode(self, z: Tensor) -> Tensor:
        """A float tensor onto the lattice (rounding where the lattice needs it)."""

    def decode(self, state: Tensor) -> Tensor:
        """A lattice state as the float tensor the network sees."""


@dataclass(frozen=True)
class FloatLattice:
    """States kept as floats of ``dtype`` (float64 is near-exact, float32 is not)."""

    dtype: torch.dtype = torch.float64

    def encode(self, z: Tensor) -> Tensor:
        return z.to(self.dtype)

    def decode(self, state: Tensor) -> Tensor:
        return state


@dataclass(frozen=True)
class FixedPoint:
    """States kept as int64 multiples of 2^−bits; integer additions make γ = 1 BDIA exact."""

    bits: int = 40

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 52:
            raise InvalidParameter(f"fixed-point bits must be in 8…52, got {self.bits}")

    def encode(self, z: Tensor) -> Tensor:
        scaled = torch.round(z.double() * 2.0**self.bits)
        # Keep |Z| far below 2^62 so that sums of a few states cannot overflow int64.
        if not bool(torch.isfinite(scaled).all()) or float(scaled.abs().max()) >= 2.0**60:
            raise InvalidParameter(f"a latent value exceeds the fixed-point range ±2^{60 - self.bits}: lower the bits")
        return scaled.to(torch.int64)

    def decode(self, state: Tensor) -> Tensor:
        return state.double() / 2.0**self.bits


STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def lattice_for(state: str) -> Lattice:
    """The lattice ``SamplingParams.state`` names: ``fixed-point``, ``float64`` or ``float32``."""
    return FixedPoint() if state == "fixed-point" else FloatLattice(STATE_DTYPES[state])


class Pair(NamedTuple):
    """What a walk over BDIA-style pairs returns: the lattice states (hi, lo) and, when asked, the
    trajectory (the lattice states of levels 0…K stacked along a new first axis)."""

    hi: Tensor
    lo: Tensor
    trajectory: Tensor | None = None


def nfe(method: str, levels: int, direction: str) -> int:
    """Network evaluations a walk spends over ``levels`` levels (docs/numerics.md)."""
    if method == "edict":
        return 2 * levels
    if method == "ddim":
        return levels
    if method == "bdia":
        return levels if direction == "invert" else levels - 1
    raise InvalidParameter(f"unknown method {method!r} (use ddim, bdia or edict)")


# --- DDIM (docs/numerics.md) ------------------------------------------------------------------------


def ddim_sample(grid: LevelGrid, z: Tensor, *, start: int | None = None, guide: Guide | None = None) -> Walk[Tensor]:
    """Plain DDIM from level ``start`` (default N) to level 0: ``start`` NFE."""
    start = grid.steps if start is None else start
    for i in range(start, 0, -1):
        eps = yield z, i
        z = ddim(z, eps, grid, i, i - 1)
        if guide is not None:
            z = guide(i - 1, z)
    return z


def ddim_invert(grid: LevelGrid, z0: Tensor, *, levels: int | None = None) -> Walk[Tensor]:
    """DDIM inversion to level K (diffusers' DDIMInverseScheduler convention: ε at z_i, t_{i+1}); inexact."""
    levels = grid.steps if levels is None else levels
    z = z0
    for i in range(levels):
        eps = yield z, i + 1
        z = ddim(z, eps, grid, i, i + 1)
    return z


# --- BDIA (docs/numerics.md) ------------------------------------------------------------------------


def _bdia_increment(lattice: Lattice, z: Tensor, eps: Tensor, grid: LevelGrid, i: int, gamma: float) -> Tensor:
    """Δ(z_i) = D(z_i; i→i−1) − γ·D(z_i; i→i+1), put on the lattice."""
    eps = eps.to(z.dtype)
    down = ddim(z, eps, grid, i, i - 1)
    up = ddim(z, eps, grid, i, i + 1)
    return lattice.encode(down - up if gamma == 1.0 else down - gamma * up)


def bdia_sample(
    grid: LevelGrid,
    hi: Tensor,
    lo: Tensor | None = None,
    *,
    start: int | None = None,
    gamma: float = 1.0,
    lattice: Lattice | None = None,
    guide: Guide | None = None,
) -> Walk[Pair]:
    """BDIA-DDIM toward level 0 from the pair (z_K, z_{K−1}) given as lattice states.

    Without ``lo`` (sampling from noise) the first step is plain DDIM from ``hi`` (one extra NFE).
    Returns the final pair (z_1, z_0) as lattice states: the inversion's starting point for a
    sample-then-invert round trip.
    """
    lattice = lattice or FloatLattice(hi.dtype)
    start = grid.steps if start is None else start
    if lo is None:
        eps = yield lattice.decode(hi), start
        lo = lattice.encode(ddim(lattice.decode(hi), eps, grid, start, start - 1))
        if guide is not None:
            lo = guide(start - 1, lo)
    for i in range(start - 1, 0, -1):
        z = lattice.decode(lo)
        eps = yield z, i
        delta = _bdia_increment(lattice, z, eps, grid, i, gamma)
        hi, lo = lo, (hi + delta if gamma == 1.0 else gamma * hi + delta)
        if guide is not None:
            lo = guide(i - 1, lo)
    return Pair(hi, lo)


def bdia_invert(
    grid: LevelGrid,
    z0: Tensor,
    *,
    levels: int | None = None,
    z1: Tensor | None = None,
    gamma: float = 1.0,
    lattice: Lattice | None = None,
    keep_trajectory: bool = False,
) -> Walk[Pair]:
    """BDIA-DDIM inversion of the clean latent ``z0`` to the pair (z_K, z_{K−1}) as lattice states.

    The bootstrap is one DDIM-inversion step z_1 = D(z_0, ε(z_0, t_1); 0→1) unless the pair's
    other half ``z1`` (a lattice state) is given, as after a sampling run. With ``keep_trajectory``
    the result also holds the lattice states of levels 0…K (what masked edits keep outside the mask).
    """
    lattice = lattice or FloatLattice(z0.dtype)
    levels = grid.steps if levels is None else levels
    lo = lattice.encode(z0)
    if z1 is None:
        z = lattice.decode(lo)
        eps = yield z, 1
        hi = lattice.encode(ddim(z, eps.to(z.dtype), grid, 0, 1))
    else:
        hi = z1
    trajectory = [lo, hi] if keep_trajectory else None
    for i in range(1, levels):
        z = lattice.decode(hi)
        eps = yield z, i
        delta = _bdia_increment(lattice, z, eps, grid, i, gamma)
        lo, hi = hi, (lo - delta if gamma == 1.0 else (lo - delta) / gamma)
        if trajectory is not None:
            trajectory.append(hi)
    return Pair(hi, lo, None if trajectory is None else torch.stack(trajectory))


# --- EDICT (docs/numerics.md) ---------------------------------------------------------------------------

EDICT_P = 0.93


def edict_sample(
    grid: LevelGrid, x: Tensor, y: Tensor | None = None, *, start: int | None = None, p: float = EDICT_P
) -> Walk[Pair]:
    """EDICT generation from the coupled pair (x_K, y_K) to (x_0, y_0): 2 NFE per level."""
    start = grid.steps if start is None else start
    y = x.clone() if y is None else y
    for i in range(start, 0, -1):
        a, b = grid.ddim_coefficients(i, i - 1)
        x_ = a * x + b * (yield y, i)
        y_ = a * y + b * (yield x_, i)
        x = p * x_ + (1 - p) * y_
        y = p * y_ + (1 - p) * x
    return Pair(x, y)


def edict_invert(grid: LevelGrid, z0: Tensor, *, levels: int | None = None, p: float = EDICT_P) -> Walk[Pair]:
    """EDICT inversion, the exact algebraic reverse of ``edict_sample``: 2 NFE per level."""
    levels = grid.steps if levels is None else levels
    x = y = z0
    for i in range(1, levels + 1):
        a, b = grid.ddim_coefficients(i, i - 1)
        y_ = (y - (1 - p) * x) / p
        x_ = (x - (1 - p) * y_) / p
        y = (y_ - b * (yield x_, i)) / a
        x = (x_ - b * (yield y, i)) / a
    return Pair(x, y)
