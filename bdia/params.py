"""Every inversion and edit parameter, with its default, range and validation, defined once.

The engine, the CLI, the API's request schemas, ``GET /v1/models``'s defaults, the cache key and the
worker all use these models, so a request means the same thing wherever it is checked. Torch-free:
importing this module loads pydantic only.

``Model.create(**fields)`` (the engine's and the CLI's way) raises ``InvalidParameter`` with one line
naming each bad field; plain construction and ``model_validate`` (the API's way) raise pydantic's
``ValidationError``, which the API turns into a 422 listing every field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from typing_extensions import Self

from .errors import GammaUnstable, InvalidParameter

P = TypeVar("P", bound=BaseModel)

Method = Literal["bdia", "ddim", "edict"]
StateDtype = Literal["float64", "float32"]
EditControl = Literal["none", "swap", "cross", "cross+self"]
EditMask = Literal["auto", "attention", "noise", "none"]
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


def one_line(exc: ValidationError, *, inputs: bool = True) -> str:
    """A pydantic error as one line: ``field: message (got value)`` for each bad field; ``inputs=False``
    leaves the values out (settings may hold secrets)."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error.get("loc", ())) or "parameters"
        shown = inputs and "input" in error and not isinstance(error["input"], dict)
        got = f" (got {error['input']!r})" if shown else ""
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
    control: EditControl = Field(
        "cross",
        description="attention control from the exact source branch (Prompt-to-Prompt): none, swap (cross-attention "
        "injection for the swapped words and the kept phrases' nouns), cross (for every word with a source "
        "counterpart) or cross+self (and self-attention injection)",
    )
    cross_fraction: float = Field(
        0.8, ge=0, le=1, description="share of the steps with cross-attention injection (swap and cross)"
    )
    self_fraction: float = Field(0.4, ge=0, le=1, description="share of the steps with self-attention injection")
    reweight: dict[str, float] | None = Field(
        None, description='edit-prompt words → attention factor in [0, 10] (e.g. {"red": 2})'
    )
    blend_words: list[str] | None = Field(
        None,
        description="the words whose attention makes the automatic mask (default: the nouns of the changed words' "
        "phrases); each must be in the source or the edit prompt",
    )
    mask_mode: EditMask = Field(
        "auto",
        description="where the edit may change the image: auto (the attention map of the changed phrases' nouns; "
        "none when it covers most of the image, a global edit; the noise difference where there is no map), "
        "attention, noise, or none (no blending); outside the mask the result is the source, bit for bit",
    )
    mask_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="level of the min-max normalised attention map above which a pixel is in the mask "
        "(default: Otsu's threshold, chosen per map)",
    )
    keep_unchanged: bool = Field(
        True,
        description="the automatic mask leaves out the objects of the phrases the edit does not change (where "
        "their noun's attention outweighs the changed nouns'); whether an edit is global is decided before",
    )
    unchanged_tolerance: int = Field(
        12,
        ge=0,
        le=255,
        description="inside the edit mask, pixels the edit changed by at most this many levels (0–255, every "
        "channel) keep the source's own value, and the reported mask shrinks to the pixels that differ; a global "
        "edit is settled over the whole image (measured: docs/benchmarks.md); 0 keeps every regenerated pixel",
    )
    restart_removed: bool = Field(
        True,
        description="where a phrase the edit deletes was, regenerate from fresh noise (its inverted state still "
        "draws it; one extra network call finds the region); false: that region starts from the inversion too",
    )

    @field_validator("reweight", mode="after")
    @classmethod
    def _factors(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for word, factor in (value or {}).items():
            if not word.strip():
                raise ValueError("reweight words must not be empty")
            if not (math.isfinite(factor) and 0 <= factor <= 10):
                raise ValueError(f"the factor of {word!r} must be in [0, 10], got {factor}")
        return value

    @field_validator("blend_words", mode="after")
    @classmethod
    def _blend(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not w.strip() for w in value):
            raise ValueError("blend words must not be empty")
        return value or None


EDIT_CONTROL_FIELDS: tuple[str, ...] = (
    "control",
    "cross_fraction",
    "self_fraction",
    "reweight",
    "blend_words",
    "mask_mode",
    "mask_threshold",
    "keep_unchanged",
    "restart_removed",
    "unchanged_tolerance",
)
"""``EditParams`` fields that shape a controlled edit (what an edit job carries besides prompt, guidance, γ)."""


def flow_edit_problem(edit: EditParams, *, masked: bool) -> tuple[str, str] | None:
    """(field, why) when an edit asks a flow model (SD 3, Flux; prediction type ``flow``) for what only UNet
    models have: attention control, or an automatic mask without a mask image. Flow models edit as plain BDIA
    regenerations (their defaults: control and mask_mode ``none``). None when ``edit`` fits."""
    if edit.control != "none":
        why = f"attention control needs a UNet, got {edit.control!r}"
        return "control", f"must be 'none' on a flow model (SD 3, Flux): {why}"
    if edit.mask_mode != "none" and not masked:
        return "mask_mode", (
            f"must be 'none' on a flow model (SD 3, Flux), or give a mask image: automatic masks need a UNet's "
            f"attention, got {edit.mask_mode!r}"
        )
    return None


DEFAULTS_FILE = "bdia_defaults.json"
"""A model folder's recommended parameters (``ModelDefaults``), at the folder's root."""


class SampleDefaults(Params):
    """How to sample from noise when a request does not say (``bdia sample``, ``bdia.sample``)."""

    steps: int = Field(50, ge=1, description="sampling steps")
    guidance_scale: float = Field(7.5, ge=0, allow_inf_nan=False, description="classifier-free guidance")
    gamma: float = Field(1.0, ge=0, le=1, description="BDIA's γ; 0 = plain DDIM")


class ModelDefaults(SamplingParams):
    """A model's recommended parameters: what applies wherever a request leaves a parameter out.

    The top-level fields are an inversion's (``SamplingParams``); ``edit`` holds ``EditParams`` fields
    that apply to edits (a prompt other than the source's; a reconstruction keeps the inversion's
    settings), ``sample`` those of sampling from noise. A model folder gives them in ``bdia_defaults.json``
    (``read_defaults``); whatever the file leaves out keeps the built-in default.
    """

    edit: EditParams = Field(default_factory=EditParams, description="defaults of edits (not reconstructions)")
    sample: SampleDefaults = Field(default_factory=SampleDefaults, description="defaults of sampling from noise")

    @field_validator("edit", mode="after")
    @classmethod
    def _no_edit_prompt(cls, value: EditParams) -> EditParams:
        if value.prompt is not None:
            raise ValueError("an edit's prompt has no default")
        return value

    def inversion(self, **given: Any) -> dict[str, Any]:
        """Every ``SamplingParams`` field: its value in ``given`` unless missing or None, else this default."""
        return {
            name: given[name] if given.get(name) is not None else getattr(self, name)
            for name in SamplingParams.model_fields
        }

    def sampling(self, **given: Any) -> dict[str, Any]:
        """Every ``SampleDefaults`` field: its value in ``given`` unless missing or None, else this default."""
        return {
            name: given[name] if given.get(name) is not None else getattr(self.sample, name)
            for name in SampleDefaults.model_fields
        }

    def edit_for(self, given: P, source_prompt: str | None) -> P:
        """``given`` (``EditParams`` or a model with some of its fields) with the fields it leaves out (or
        None) taken from ``edit``, when it is an edit: its prompt is given and differs from
        ``source_prompt``. A reconstruction is returned unchanged: it keeps the inversion's settings."""
        prompt = getattr(given, "prompt", None)
        if prompt is None or prompt == source_prompt:
            return given
        fields = type(given).model_fields
        update = {
            name: getattr(self.edit, name)
            for name in self.edit.model_fields_set
            if name in fields and (name not in given.model_fields_set or getattr(given, name) is None)
        }
        return given.model_copy(update=update) if update else given

    def check_schedule(self, max_steps: int) -> ModelDefaults:
        """Refuse step counts beyond the model's ``max_steps``, and unstable γ; returns self."""
        for name, steps in (("steps", self.steps), ("sample.steps", self.sample.steps)):
            if steps > max_steps:
                raise InvalidParameter(f"{name} must be at most {max_steps} for this model, got {steps}")
        self.check()
        return self

    @classmethod
    def read(cls, path: str | Path, max_steps: int | None = None) -> ModelDefaults:
        """A defaults file (JSON object) checked against the model's ``max_steps``; ``InvalidParameter`` naming
        the file and each bad field when it does not fit."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            defaults = cls.model_validate(data)
            return defaults if max_steps is None else defaults.check_schedule(max_steps)
        except ValidationError as exc:
            raise InvalidParameter(f"bad model defaults in {path}: {one_line(exc)}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and InvalidParameter are ValueErrors
            raise InvalidParameter(f"bad model defaults in {path}: {exc}") from None


def read_defaults(folder: str | Path, max_steps: int | None = None) -> ModelDefaults:
    """A model folder's ``bdia_defaults.json`` (``ModelDefaults.read``), or the built-in defaults without one."""
    path = Path(folder) / DEFAULTS_FILE
    return ModelDefaults.read(path, max_steps) if path.is_file() else ModelDefaults()


__all__ = [
    "DEFAULTS_FILE",
    "DEFAULT_GAMMA_BOUND",
    "EDIT_CONTROL_FIELDS",
    "METHODS",
    "EditParams",
    "InversionParams",
    "Method",
    "ModelDefaults",
    "SampleDefaults",
    "SamplingParams",
    "StateDtype",
    "check_gamma",
    "default_model",
    "flow_edit_problem",
    "gamma_growth",
    "levels",
    "read_defaults",
]
