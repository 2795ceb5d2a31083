"""The inversion: an image's latent pair under one set of parameters, and its lossless serialisation.

An ``Inversion`` holds lattice states exactly as the sampler left them (int64 fixed point or
floats), so writing it to safetensors bytes and reading it back changes no bit, and a
regeneration from the bytes is the same computation as one from memory.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInversion
from .params import InversionParams
from .sampling import Lattice, lattice_for

FORMAT = "bdia.inversion/2"
"""Version 2 adds the optional ``source`` (the uploaded image); version 1 files still load (no source)."""
READABLE = ("bdia.inversion/1", FORMAT)


@dataclass
class Inversion:
    """The latent pair at level K plus what is needed to regenerate and to judge exactness.

    ``z_hi``/``z_lo`` are lattice states: BDIA's (z_K, z_{K−1}), EDICT's coupled (x_K, y_K),
    DDIM's z_K twice. ``z0`` is the source latent on the same lattice (what a reconstruction
    must give back). ``trajectory`` (BDIA only, optional) holds levels 0…K for masked edits; it is
    stored packed, losslessly (``pack_trajectory``).
    ``source`` (optional) is the uploaded image as PNG bytes (RGB, upright): an edit returns an image
    of its size with its own pixels outside the edit mask. Inversions without it edit at z0's size.
    """

    params: InversionParams
    z_hi: torch.Tensor
    z_lo: torch.Tensor
    z0: torch.Tensor
    fingerprint: dict[str, str]
    nfe: int
    seconds: float = 0.0
    trajectory: torch.Tensor | None = None
    source: bytes | None = None

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

    @property
    def source_size(self) -> tuple[int, int] | None:
        """The source image's (width, height), None when the inversion does not hold it."""
        if self.source is None:
            return None
        with Image.open(io.BytesIO(self.source)) as picture:  # reads the header only
            return picture.size

    def source_image(self) -> Image.Image | None:
        """The source image (RGB, exactly the uploaded pixels), None when the inversion does not hold it."""
        if self.source is None:
            return None
        with Image.open(io.BytesIO(self.source)) as picture:
            return picture.convert("RGB")

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
            **({} if self.source is None else {"source": json.dumps(self._source_info(), sort_keys=True)}),
        }

    def _source_info(self) -> dict[str, Any]:
        """What the ``source`` tensor holds: PNG bytes (a uint8 vector) of an image of this size."""
        width, height = self.source_size or (0, 0)
        return {"encoding": "png", "width": width, "height": height}

    def to_bytes(self) -> bytes:
        """Safetensors bytes: tensors ``z_hi``, ``z_lo``, ``z0`` (+ ``trajectory_packed``, ``source``) and metadata."""
        from safetensors.torch import save

        tensors = {"z_hi": self.z_hi, "z_lo": self.z_lo, "z0": self.z0}
        packed: dict[str, str] = {}
        if self.trajectory is not None:
            tensors["trajectory_packed"], info = pack_trajectory(self.trajectory)
            packed["trajectory"] = json.dumps(info, sort_keys=True)
        if self.source is not None:
            tensors["source"] = torch.frombuffer(bytearray(self.source), dtype=torch.uint8)
        # Clones: with one level (or a float lattice that needs no rounding) states can share memory
        # with z0, and safetensors refuses aliased tensors.
        return save(
            {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
            metadata={**self.metadata(), **packed},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Inversion:
        """Read ``to_bytes`` output back, bit for bit; ``InvalidInversion`` for anything else."""
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = read_metadata(data)
            if meta.get("format") not in READABLE:
                raise ValueError(f"format {meta.get('format')!r} is not one of {', '.join(READABLE)}")
            source = _source(tensors.get("source"), meta.get("source"))
            return cls(
                params=_params(json.loads(meta["params"])),
                z_hi=tensors["z_hi"],
                z_lo=tensors["z_lo"],
                z0=tensors["z0"],
                trajectory=_trajectory(tensors, meta),
                fingerprint=json.loads(meta["fingerprint"]),
                nfe=int(meta["nfe"]),
                seconds=float(meta.get("seconds", "0")),
                source=source,
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
            source=self.source,
        )


def _params(data: dict[str, Any]) -> InversionParams:
    """The parameters a file records (fields a newer writer added are ignored)."""
    return InversionParams(**{k: v for k, v in data.items() if k in InversionParams.model_fields})


def _source(tensor: torch.Tensor | None, info: str | None) -> bytes | None:
    """The source image's PNG bytes from the ``source`` tensor, checked against its metadata."""
    if tensor is None:
        return None
    described = json.loads(info or "{}")
    if described.get("encoding") != "png":
        raise ValueError(f"source encoding {described.get('encoding')!r} is not png")
    data = tensor.numpy().tobytes()
    with Image.open(io.BytesIO(data)) as picture:
        if picture.size != (described.get("width"), described.get("height")):
            raise ValueError(f"the source image is {picture.size}, its metadata says {described}")
    return data


TRAJECTORY_ENCODING = "xor+byte-planes+zlib"
TRAJECTORY_DTYPES = {"int64": torch.int64, "float64": torch.float64, "float32": torch.float32}
_SAMPLE = 1 << 16
"""Bytes of a byte plane compressed to judge whether the plane compresses at all."""


def pack_trajectory(trajectory: torch.Tensor, level: int = 1) -> tuple[torch.Tensor, dict[str, Any]]:
    """The trajectory as a uint8 tensor, losslessly, and what ``unpack_trajectory`` needs to read it back.

    Each level's bits are XORed with the level before (adjacent levels share their high bits), then split
    into byte planes (all first bytes, all second bytes, …). A plane that compresses is stored
    zlib-compressed (``level``), one that does not (the low bytes: noise) as it is, which spares the
    time of compressing it. 1.4–1.6× smaller, bit for bit the same once read back
    (docs/benchmarks.md#storage).
    """
    array = trajectory.detach().cpu().contiguous().numpy()
    width = array.dtype.itemsize
    bits = array.view(f"u{width}").copy()
    bits[1:] ^= bits[:-1].copy()
    planes = np.ascontiguousarray(bits.reshape(-1).view(np.uint8).reshape(-1, width).T)
    chunks: list[bytes] = []
    layout: list[list[Any]] = []
    for plane in planes:
        raw = plane.tobytes()
        squeezed = len(zlib.compress(raw[:_SAMPLE], level)) < 0.95 * min(len(raw), _SAMPLE)
        chunk = zlib.compress(raw, level) if squeezed else raw
        chunks.append(chunk)
        layout.append(["zlib" if squeezed else "raw", len(chunk)])
    info = {
        "encoding": TRAJECTORY_ENCODING,
        "dtype": str(trajectory.dtype).removeprefix("torch."),
        "shape": list(trajectory.shape),
        "planes": layout,
    }
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8), info


def unpack_trajectory(packed: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Read back ``pack_trajectory``'s tensor, bit for bit; ``ValueError`` for anything else."""
    if info.get("encoding") != TRAJECTORY_ENCODING or info.get("dtype") not in TRAJECTORY_DTYPES:
        raise ValueError(f"trajectory encoding {info.get('encoding')!r} of {info.get('dtype')!r} is not readable")
    dtype = TRAJECTORY_DTYPES[info["dtype"]]
    shape = [int(n) for n in info["shape"]]
    width, count = torch.empty(0, dtype=dtype).element_size(), math.prod(shape)
    data, offset, planes = packed.numpy().tobytes(), 0, []
    for method, size in info.get("planes", []):
        chunk = data[offset : offset + int(size)]
        offset += int(size)
        planes.append(zlib.decompressobj().decompress(chunk, count + 1) if method == "zlib" else chunk)  # bounded
    if offset != len(data) or len(planes) != width or any(len(p) != count for p in planes):
        raise ValueError(f"the packed trajectory does not hold {shape} {info['dtype']}")
    raw = np.frombuffer(b"".join(planes), dtype=np.uint8)
    bits = np.ascontiguousarray(raw.reshape(width, -1).T).view(f"u{width}").reshape(shape)
    bits = np.bitwise_xor.accumulate(bits, axis=0)
    return torch.from_numpy(bits.view(torch.empty(0, dtype=dtype).numpy().dtype))


def _trajectory(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> torch.Tensor | None:
    """The trajectory a file holds: packed (with its metadata), or as a plain tensor (files written before)."""
    if "trajectory_packed" in tensors:
        return unpack_trajectory(tensors["trajectory_packed"], json.loads(meta.get("trajectory", "{}")))
    return tensors.get("trajectory")


def read_metadata(data: bytes) -> dict[str, str]:
    """Safetensors metadata from bytes (the header is JSON after an 8-byte little-endian length)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header.get("__metadata__", {})
