"""Deterministic numerics and the numerics fingerprint (docs/numerics.md#determinism).

A fixed-point round trip is bit-exact only when ε̂ is computed bit-identically in both
directions. ``configure_determinism`` switches off what varies between runs;
``fingerprint`` records everything else that decides the bits, so a reconstruction can
tell "exact" (same fingerprint) from "near-exact".
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from .models import DiffusionModel


def _device(model_or_device: DiffusionModel | torch.device | str | None) -> torch.device:
    if isinstance(model_or_device, DiffusionModel):
        return model_or_device.device
    if model_or_device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(model_or_device)


def configure_determinism(model_or_device: DiffusionModel | torch.device | str | None = None) -> None:
    """Put this process in exact mode: TF32 off, deterministic algorithms on, cuDNN autotuning off.

    The flags are process-wide. On CUDA, cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it
    initialises, so it is set here (if unset) but only takes effect when this runs before the
    first CUDA matmul: call it right after loading the model, or export the variable up front.
    """
    if _device(model_or_device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _flag(value: bool) -> str:
    return "on" if value else "off"


def fingerprint(model: DiffusionModel, *, batch_size: int, slot: int) -> dict[str, str]:
    """Everything that decides the bits of ε̂ for a sample at ``slot`` of a batch of ``batch_size``.

    ``batch_size`` and ``slot`` are the Denoiser's (samples per guidance half; see
    ``Denoiser.layout``). All values are strings, so fingerprints compare and serialise plainly.
    """
    device = model.device
    cuda = device.type == "cuda"
    kind = torch.cuda.get_device_name(device) if cuda else f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    return {
        "device": kind,
        "torch": torch.__version__,
        "cuda": (torch.version.cuda or "none") if cuda else "none",
        "cudnn": str(torch.backends.cudnn.version() or "none") if cuda else "none",
        "dtype": str(model.dtype).removeprefix("torch."),
        "attention": model.attention_backend,
        "compiled": _flag(model.compiled),
        "batch_size": str(batch_size),
        "slot": str(slot),
        "threads": "n/a" if cuda else str(torch.get_num_threads()),
        "tf32": _flag(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
        "deterministic": _flag(torch.are_deterministic_algorithms_enabled()),
        "cudnn_benchmark": _flag(torch.backends.cudnn.benchmark),
        "model": model.name,
        "weights": model.weights_digest,
    }


def fingerprint_id(fp: dict[str, str]) -> str:
    """A short stable id of a fingerprint: the first 16 hex digits of sha256 over its sorted JSON."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
