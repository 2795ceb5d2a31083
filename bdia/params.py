"""Every inversion and edit parameter, with its default, range and validation, defined once.

The engine, the CLI, the API's request schemas, ``GET /v1/models``'s defaults, the cache key and the
worker all use these models, so a request means the same thing wherever it is checked. Torch-free:
importing this module loads pydantic only.

``Model.create(**fields)`` (the engine's and the CLI's way) raises ``InvalidParameter`` with one line
naming each bad field; plain construction and ``model_validate`` (the API's way) raise pydantic's
``ValidationError``, which the API turns into a 422 listing every field.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from typing_extensions import Self

from .errors import GammaUnstable, InvalidParameter

Method = Literal["bdia", "ddim", "edict"]
StateDtype = Literal["float64", "float32"]
METHODS: tuple[str, ...] = ("bdia", "ddim", "edict")

DEFAULT_GAMMA_BOUND = 30.0
"""The largest error growth γ^−(K−1) an inversion may have (see ``check_gamma``)."""

BUNDLED_MODEL = "shapes"
FALLBACK_MODEL = "tiny-random"
MODEL_ENV = "BDIA_MODEL"


def default_model() -> str:
    """``$BDIA_MODEL``, else the bundled ``shapes`` model when its weights are present, else ``tiny-random``."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    bundled = Path(__file__).parent / "assets" / BUNDLED_MODEL / "model_index.json"
    return BUNDLED_MODEL if bundled.exists() else FALLBACK_MODEL


def levels(steps: int, strength: float) -> int:
    """K = round(N·strength), at least 1: how many levels an image is inverted."""
    return max(1, round(steps * strength))


def gamma_growth(gamma: float, levels: int) -> float:
    """γ^−(K−1): how much a BDIA inversion over K levels amplifies a state error.

    The inversion's bootstrap step is plain DDIM and each of the K − 1 BDIA steps after it divides
    by γ once, so this is exactly the growth the engine's arithmetic has.
    """
    if levels <= 1:
        return 1.0
    try:
        return gamma ** -(levels - 1)
    except OverflowError:  # a γ so small that the growth is beyond any float
        return math.inf


def check_gamma(gamma: float, levels: int, bound: float = DEFAULT_GAMMA_BOUND, *, inverting: bool) -> None:
    """Refuse γ outside its range ((0, 1] to invert, [0, 1] to sample), and inversions growing errors past ``bound``."""
    low_ok = gamma > 0 if inverting else gamma >= 0
    if not (low_ok and gamma <= 1):
        raise InvalidParameter(f"gamma must be in {'(0, 1]' if inverting else '[0, 1]'}, got {gamma}")
    if inverting and (growth := gamma_growth(gamma, levels)) > bound:
        raise GammaUnstable(
            f"gamma={gamma:g} over {levels} levels amplifies errors by {growth:.3g}× (bound {bound:g}): "
            "use gamma closer to 1 or fewer steps"
        )


def one_line(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: message (got value)`` for each bad field."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error.get("loc", ())) or "parameters"
        got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
        parts.append(f"{field}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


class Params(BaseModel):
    """Base of the parameter models: frozen, unknown fields refused, text fields valid Unicode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """JSON can carry lone surrogates (``"\\ud800"``), which no UTF-8 response, file or log can hold."""
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
        return value

    @classmethod
    def create(cls, **fields: Any) -> Self:
        """Validate ``fields``; ``InvalidParameter`` (one line naming each bad field) if they do not fit."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InvalidParameter(one_line(exc)) from None


class SamplingParams(Params):
    """The numeric settings of an inversion (and of the regenerations made from it)."""

    negative_prompt: str = Field("", description="the prompt guidance steers away from")
    steps: int = Field(50, ge=1, description="N, the number of sampling steps (up to the model's schedule)")
    strength: float = Field(1.0, gt=0, le=1, description="how far toward noise: K = round(steps·strength)")
    guidance_scale: float = Field(1.0, ge=0, allow_inf_nan=False, description="classifier-free guidance; 1 = none")
    gamma: float = Field(1.0, gt=0, le=1, description="BDIA's γ; exact mode needs γ = 1")
    exact: bool = Field(True, description="fixed-point state: a bit-exact round trip (with γ = 1)")
    method: Method = Field("bdia", description="bdia, or the inexact baselines ddim and edict")
    state_dtype: StateDtype = Field("float64", description="the state's dtype when not exact")

    @property
    def levels(self) -> int:
        """K = round(N·strength), at least 1."""
        return levels(self.steps, self.strength)

    @property
    def fixed_point(self) -> bool:
        """Exact mode proper: BDIA with γ = 1 on the fixed-point lattice."""
        return self.exact and self.method == "bdia" and self.gamma == 1.0

    @property
    def state(self) -> str:
        """The lattice the states live on: ``fixed-point``, ``float64`` (any exact request) or ``float32``."""
        return "fixed-point" if self.fixed_point else ("float64" if self.exact else self.state_dtype)

    def check(self, gamma_bound: float = DEFAULT_GAMMA_BOUND) -> SamplingParams:
        """Raise ``GammaUnstable`` for a BDIA inversion whose error growth exceeds ``gamma_bound``; returns self."""
        if self.method == "bdia":
            check_gamma(self.gamma, self.levels, gamma_bound, inverting=True)
        return self

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every numeric setting's default (what ``GET /v1/models`` shows)."""
        return {name: field.default for name, field in SamplingParams.model_fields.items()}


class InversionParams(SamplingParams):
    """Everything that determines an inversion besides the image: the model, the source prompt, the settings."""

    model: str
    prompt: str = Field("", description="the source prompt: what the image shows (may be empty)")


class EditParams(Params):
    """What an edit changes; every ``None`` means "as the inversion was made"."""

    prompt: str | None = Field(None, description="the edit prompt (default: the source prompt, a reconstruction)")
    guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False, description="default: the inversion's")
    negative_prompt: str | None = Field(None, description="default: the inversion's")
    edit_gamma: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the edit's own BDIA γ in [0, 1] (default: the inversion's). Below 1 it damps the colour casts "
        "a new prompt leaves with γ = 1; the edit then runs on a float64 state, never exact. Reconstructions keep γ.",
    )


__all__ = [
    "DEFAULT_GAMMA_BOUND",
    "METHODS",
    "EditParams",
    "InversionParams",
    "Method",
    "SamplingParams",
    "StateDtype",
    "check_gamma",
    "default_model",
    "gamma_growth",
    "levels",
]
