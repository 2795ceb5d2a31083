"""The inversion: an image's latent pair under one set of parameters, and its lossless serialisation.

An ``Inversion`` holds lattice states exactly as the sampler left them (int64 fixed point or
floats), so writing it to safetensors bytes and reading it back changes no bit, and a
regeneration from the bytes is the same computation as one from memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .errors import InvalidInversion, InvalidParameter
from .sampling import DEFAULT_GAMMA_BOUND, FixedPoint, FloatLattice, Lattice, check_gamma

FORMAT = "bdia.inversion/1"
METHODS = ("bdia", "ddim", "edict")
STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class InversionParams:
    """Everything that determines an inversion besides the image (defaults as the API documents)."""

    model: str
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 50
    strength: float = 1.0
    guidance_scale: float = 1.0
    gamma: float = 1.0
    exact: bool = True
    method: str = "bdia"
    state_dtype: str = "float64"

    @property
    def levels(self) -> int:
        """K = round(N·strength): how far toward noise the image is inverted."""
        return max(1, round(self.steps * self.strength))

    @property
    def fixed_point(self) -> bool:
        """Exact mode proper: BDIA with γ = 1 on the fixed-point lattice."""
        return self.exact and self.method == "bdia" and self.gamma == 1.0

    def lattice(self) -> Lattice:
        if self.fixed_point:
            return FixedPoint()
        dtype = "float64" if self.exact else self.state_dtype
        return FloatLattice(STATE_DTYPES[dtype])

    def validate(self, gamma_bound: float = DEFAULT_GAMMA_BOUND) -> InversionParams:
        """Raise ``InvalidParameter`` (or ``GammaUnstable``) for a request that cannot be honoured."""
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise InvalidParameter(f"steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.strength <= 1:
            raise InvalidParameter(f"strength must be in (0, 1], got {self.strength}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise InvalidParameter(f"guidance_scale must be a finite number ≥ 0, got {self.guidance_scale}")
        if self.method not in METHODS:
            raise InvalidParameter(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.state_dtype not in STATE_DTYPES:
            raise InvalidParameter(f"state_dtype must be float64 or float32, got {self.state_dtype!r}")
        if self.method == "bdia":
            check_gamma(self.gamma, self.levels, gamma_bound, inverting=True)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InversionParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Inversion:
    """The latent pair at level K plus what is needed to regenerate and to judge exactness.

    ``z_hi``/``z_lo`` are lattice states: BDIA's (z_K, z_{K−1}), EDICT's coupled (x_K, y_K),
    DDIM's z_K twice. ``z0`` is the source latent on the same lattice (what a reconstruction
    must give back). ``trajectory`` (BDIA only, optional) holds levels 0…K for masked edits.
    """

    params: InversionParams
    z_hi: torch.Tensor
    z_lo: torch.Tensor
    z0: torch.Tensor
    fingerprint: dict[str, str]
    nfe: int
    seconds: float = 0.0
    trajectory: torch.Tensor | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return self.params.levels

    @property
    def lattice(self) -> Lattice:
        return self.params.lattice()

    @property
    def latent_std(self) -> float:
        """std(z_K): about 1 for a healthy full inversion (SPEC §4)."""
        return float(self.lattice.decode(self.z_hi).double().std())

    @property
    def fingerprint_id(self) -> str:
        from .numerics import fingerprint_id

        return fingerprint_id(self.fingerprint)

    def metadata(self) -> dict[str, str]:
        """The string metadata stored beside the tensors (and shown by the API)."""
        return {
            "format": FORMAT,
            "params": json.dumps(self.params.to_dict(), sort_keys=True),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "fingerprint_id": self.fingerprint_id,
            "nfe": str(self.nfe),
            "seconds": repr(self.seconds),
            "level": str(self.level),
            "latent_std": repr(self.latent_std),
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    def to_bytes(self) -> bytes:
        """Safetensors bytes: tensors ``z_hi``, ``z_lo``, ``z0`` (+ ``trajectory``) and metadata."""
        from safetensors.torch import save

        tensors = {"z_hi": self.z_hi, "z_lo": self.z_lo, "z0": self.z0}
        if self.trajectory is not None:
            tensors["trajectory"] = self.trajectory
        return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=self.metadata())

    @classmethod
    def from_bytes(cls, data: bytes) -> Inversion:
        """Read ``to_bytes`` output back, bit for bit; ``InvalidInversion`` for anything else."""
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = _metadata(data)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r} is not {FORMAT}")
            return cls(
                params=InversionParams.from_dict(json.loads(meta["params"])),
                z_hi=tensors["z_hi"],
                z_lo=tensors["z_lo"],
                z0=tensors["z0"],
                trajectory=tensors.get("trajectory"),
                fingerprint=json.loads(meta["fingerprint"]),
                nfe=int(meta["nfe"]),
                seconds=float(meta.get("seconds", "0")),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except InvalidInversion:
            raise
        except Exception as exc:  # any malformed input: one clear error
            raise InvalidInversion(f"not a bdia inversion file: {exc}") from exc

    def to(self, device: torch.device | str) -> Inversion:
        """The same inversion with its tensors on ``device``."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Inversion(
            self.params, move(self.z_hi), move(self.z_lo), move(self.z0), self.fingerprint, self.nfe,
            self.seconds, move(self.trajectory), dict(self.extra),
        )


def _metadata(data: bytes) -> dict[str, str]:
    """Safetensors metadata from bytes (the header is JSON after an 8-byte little-endian length)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header.get("__metadata__", {})
