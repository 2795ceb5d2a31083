"""One job's numerics on a loaded model: pure computation, no Redis.

The worker loop gathers a job's inputs, calls ``run_task`` in a thread, and stores what it
returns; keeping the two apart lets a later worker batch several jobs' network calls per step.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bdia
from app.cache import InversionSpec
from bdia import imaging

log = logging.getLogger(__name__)


class InputsGone(bdia.BdiaError):
    """The upload an inversion must be made from has expired (and no cached inversion is left)."""

    code = "inversion_expired"


@dataclass(frozen=True)
class Task:
    """What one job computes: ``kind`` of work on the inversion ``spec`` names."""

    kind: str
    spec: InversionSpec
    params: dict[str, Any]
    image: bytes | None = None
    """The uploaded image: needed to invert, and to measure a reconstruction's PSNR."""
    cached: bytes | None = None
    """The cached inversion's safetensors bytes (checksum already verified), if any."""
    mask: bytes | None = None


@dataclass
class Outcome:
    """What a task produced: a new inversion to cache (if it had to invert), an image, the result."""

    result: dict[str, Any]
    metrics: dict[str, Any]
    inversion: bytes | None = None
    inversion_meta: dict[str, Any] = field(default_factory=dict)
    image_png: bytes | None = None


def run_task(
    model: bdia.DiffusionModel,
    task: Task,
    *,
    gamma_bound: float,
    callback: Callable[[bdia.Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Outcome:
    """Invert (unless ``task.cached`` holds the inversion) and, for edits and reconstructions, regenerate."""
    spec = task.spec
    inversion = _cached(task)
    outcome = Outcome(result={}, metrics={"inversion_cached": inversion is not None, "inversion_nfe": 0})
    if inversion is None:
        if task.image is None:
            raise InputsGone(f"the upload of {spec.inversion_id} has expired: submit the image again")
        inversion = bdia.invert(
            model, task.image, spec.prompt,
            steps=spec.steps, strength=spec.strength, guidance_scale=spec.guidance_scale, gamma=spec.gamma,
            exact=spec.exact, method=spec.method, negative_prompt=spec.negative_prompt,
            gamma_bound=gamma_bound, callback=callback, cancel=cancel,
        )  # fmt: skip
        outcome.inversion = inversion.to_bytes()
        outcome.inversion_meta = inversion_meta(inversion, spec)
        outcome.metrics["inversion_nfe"] = inversion.nfe
    if task.kind == "invert":
        outcome.metrics["nfe"] = outcome.metrics["inversion_nfe"]
        outcome.result = {
            "inversion_id": spec.inversion_id,
            "url": f"/v1/inversions/{spec.inversion_id}",
            "latents_url": f"/v1/inversions/{spec.inversion_id}/latents",
            "latent_std": inversion.latent_std,
            "level": inversion.level,
            "fingerprint_id": inversion.fingerprint_id,
        }
        return outcome

    reconstruct = task.kind == "reconstruct"
    regeneration = bdia.regenerate(
        model, inversion,
        None if reconstruct else task.params["prompt"],
        guidance_scale=None if reconstruct else task.params.get("guidance_scale"),
        negative_prompt=None if reconstruct else task.params.get("negative_prompt"),
        mask=task.mask, callback=callback, cancel=cancel,
    )  # fmt: skip
    picture = regeneration.image
    outcome.image_png = png(picture)
    outcome.metrics["regenerate_nfe"] = regeneration.nfe
    outcome.metrics["nfe"] = outcome.metrics["inversion_nfe"] + regeneration.nfe
    outcome.result = {
        "content_type": "image/png",
        "width": picture.width,
        "height": picture.height,
        "fingerprint_match": regeneration.fingerprint_match,
    }
    if reconstruct:
        outcome.result["latent_max_abs_error"] = regeneration.latent_max_abs_error
        outcome.result["exact"] = regeneration.exact
        outcome.result["psnr"] = _psnr(model, task.image, picture)
    return outcome


def inversion_meta(inversion: bdia.Inversion, spec: InversionSpec) -> dict[str, Any]:
    """The metadata a cache entry records beside the bytes, the numerics fingerprint included."""
    return {
        "model": spec.model,
        "prompt": spec.prompt,
        "params": spec.params,
        "image_sha256": spec.image_sha256,
        "fingerprint": inversion.fingerprint,
        "fingerprint_id": inversion.fingerprint_id,
        "latent_std": inversion.latent_std,
        "level": inversion.level,
        "nfe": inversion.nfe,
        "seconds": inversion.seconds,
    }


def png(picture: Any) -> bytes:
    """PNG bytes of an image: the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _cached(task: Task) -> bdia.Inversion | None:
    if task.cached is None:
        return None
    try:
        return bdia.Inversion.from_bytes(task.cached)
    except bdia.InvalidInversion as exc:  # intact bytes, unreadable content: recompute
        log.warning("cached inversion %s is unreadable (%s): recomputing", task.spec.inversion_id, exc)
        return None


def _psnr(model: bdia.DiffusionModel, upload: bytes | None, picture: Any) -> float | None:
    """Pixel PSNR of the reconstruction against the upload fit to the model's size (None if expired)."""
    if upload is None:
        return None
    source = imaging.fit_to_model(imaging.load_image(upload), model.height, model.width)
    value = imaging.psnr(source, picture)
    return value if value != float("inf") else None
