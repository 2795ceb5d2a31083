"""The inversion: an image's latent pair under one set of parameters, and its lossless serialisation.

An ``Inversion`` holds lattice states exactly as the sampler left them (int64 fixed point or
floats), so writing it to safetensors bytes and reading it back changes no bit, and a
regeneration from the bytes is the same computation as one from memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidInversion
from .params import InversionParams
from .sampling import Lattice, lattice_for

FORMAT = "bdia.inversion/1"


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

    @property
    def level(self) -> int:
        return self.params.levels

    @property
    def lattice(self) -> Lattice:
        return lattice_for(self.params.state)

    @property
    def latent_std(self) -> float:
        """std(z_K): about 1 for a healthy full inversion."""
        return float(self.lattice.decode(self.z_hi).double().std())

    @property
    def fingerprint_id(self) -> str:
        from .numerics import fingerprint_id

        return fingerprint_id(self.fingerprint)

    def metadata(self) -> dict[str, str]:
        """The string metadata stored beside the tensors (and shown by the API)."""
        return {
            "format": FORMAT,
            "params": json.dumps(self.params.model_dump(), sort_keys=True),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "fingerprint_id": self.fingerprint_id,
            "nfe": str(self.nfe),
            "seconds": repr(self.seconds),
            "level": str(self.level),
            "latent_std": repr(self.latent_std),
        }

    def to_bytes(self) -> bytes:
        """Safetensors bytes: tensors ``z_hi``, ``z_lo``, ``z0`` (+ ``trajectory``) and metadata."""
        from safetensors.torch import save

        tensors = {"z_hi": self.z_hi, "z_lo": self.z_lo, "z0": self.z0}
        if self.trajectory is not None:
            tensors["trajectory"] = self.trajectory
        # Clones: with one level (or a float lattice that needs no rounding) states can share memory
        # with z0, and safetensors refuses aliased tensors.
        return save(
            {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
            metadata=self.metadata(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Inversion:
        """Read ``to_bytes`` output back, bit for bit; ``InvalidInversion`` for anything else."""
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = read_metadata(data)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r} is not {FORMAT}")
            return cls(
                params=_params(json.loads(meta["params"])),
                z_hi=tensors["z_hi"],
                z_lo=tensors["z_lo"],
                z0=tensors["z0"],
                trajectory=tensors.get("trajectory"),
                fingerprint=json.loads(meta["fingerprint"]),
                nfe=int(meta["nfe"]),
                seconds=float(meta.get("seconds", "0")),
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
            self.params,
            move(self.z_hi),
            move(self.z_lo),
            move(self.z0),
            self.fingerprint,
            self.nfe,
            self.seconds,
            move(self.trajectory),
        )


def _params(data: dict[str, Any]) -> InversionParams:
    """The parameters a file records (fields a newer writer added are ignored)."""
    return InversionParams(**{k: v for k, v in data.items() if k in InversionParams.model_fields})


def read_metadata(data: bytes) -> dict[str, str]:
    """Safetensors metadata from bytes (the header is JSON after an 8-byte little-endian length)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header.get("__metadata__", {})
