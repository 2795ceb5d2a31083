"""One job's numerics on a loaded model: pure computation, no Redis.

``task_job`` is a task as a ``bdia.batching`` job: a generator that yields its network requests
(in the task's numerics layout) and returns the ``Outcome``. The worker advances several of them
side by side, one shared network call per step; ``run_task`` runs one alone.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bdia
from bdia import imaging
from bdia.batching import Job, Layout, drive
from bdia.jobqueue.cache import InversionSpec
from bdia.ops import inverting, regenerating
from bdia.params import EditParams

log = logging.getLogger(__name__)

SOLO = Layout(1, 0)
"""The layout of a job run alone: a batch of one."""


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
    layout: Layout = SOLO
    """Where this task's sample sits in every network call (recorded in the fingerprints it makes)."""


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
    """Run one task alone (its network calls still in ``task.layout``)."""
    return drive(model, task_job(model, task, gamma_bound=gamma_bound), callback=callback, cancel=cancel)


def preferred_layout(task: Task, batch_size: int) -> Layout | None:
    """The layout that reproduces the bits of the task's cached inversion (None when any layout will do).

    A reconstruction needs the inversion's own layout to be bit-exact; other work prefers it too
    (so that ``fingerprint_match`` holds) but only within the worker's batch size.
    """
    inversion = _cached(task)
    layout = None if inversion is None else Layout.of(inversion.fingerprint)
    if layout is None or (task.kind != "reconstruct" and layout.batch_size != batch_size):
        return None
    return layout


def task_job(model: bdia.DiffusionModel, task: Task, *, gamma_bound: float) -> Job[Outcome]:
    """Invert (unless ``task.cached`` holds the inversion) and, for edits and reconstructions, regenerate."""
    spec = task.spec
    inversion = _cached(task)
    outcome = Outcome(result={}, metrics={"inversion_cached": inversion is not None, "inversion_nfe": 0})
    if inversion is None:
        if task.image is None:
            raise InputsGone(f"the upload of {spec.inversion_id} has expired: submit the image again")
        params = spec.inversion_params().model_copy(update={"model": model.name}).check(gamma_bound)
        picture = imaging.fit_to_model(imaging.load_image(task.image), model.height, model.width)
        inversion = yield from inverting(model, imaging.encode(model, picture), params, layout=task.layout)
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
    fields = {} if reconstruct else {name: task.params.get(name) for name in EditParams.model_fields}
    edit = EditParams.create(**fields)
    if not reconstruct and edit.prompt is None:
        raise bdia.InvalidParameter("an edit job needs a prompt")
    regeneration = yield from regenerating(
        model,
        inversion,
        edit.prompt,
        guidance_scale=edit.guidance_scale,
        negative_prompt=edit.negative_prompt,
        gamma=edit.edit_gamma,
        mask=task.mask,
        layout=task.layout,
    )
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
