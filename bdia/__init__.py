"""bdia: lossless image editing by exact diffusion inversion (BDIA, arXiv 2307.10829).

    import bdia
    model = bdia.load_model("shapes")
    bdia.configure_determinism(model)  # once per process: exact mode needs deterministic kernels
    inv = bdia.invert(model, "photo.png", "a red circle on a grey background")
    edit = bdia.regenerate(model, inv, "a blue circle on a grey background")
    edit.image.save("edit.png")

Names are imported lazily so that ``import bdia`` loads no torch: the HTTP client
(``bdia.client``) and the parameter model (``bdia.params``) work without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    BdiaError,
    Canceled,
    GammaUnstable,
    InvalidImage,
    InvalidInversion,
    InvalidParameter,
    UnknownModel,
)

__version__ = "0.1.0"

_LAZY = {
    "load_model": "models",
    "DiffusionModel": "models",
    "BDIAScheduler": "scheduler",
    "configure_determinism": "numerics",
    "Denoiser": "denoiser",
    "LevelGrid": "grid",
    "Inversion": "inversion",
    "InversionParams": "params",
    "EditParams": "params",
    "SamplingParams": "params",
    "default_model": "params",
    "Progress": "sampling",
    "invert": "ops",
    "invert_latent": "ops",
    "regenerate": "ops",
    "sample": "ops",
    "roundtrip": "ops",
    "Regeneration": "ops",
    "Sample": "ops",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bdia' has no attribute {name!r}")


__all__ = [
    "BdiaError",
    "Canceled",
    "GammaUnstable",
    "InvalidImage",
    "InvalidInversion",
    "InvalidParameter",
    "UnknownModel",
    *_LAZY,
]
