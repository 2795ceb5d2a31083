"""One job's numerics on a loaded model: pure computation, no Redis.

``task_job`` is a task as a ``bdia.batching`` job: a generator that yields its network requests
(in the task's numerics layout) and returns the ``Outcome``. The worker advances several of them
side by side, one shared network call per step; ``run_task`` runs one alone.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
    mask_png: bytes | None = None
    """The edit mask the regeneration used, at the result's size (white = changed); None without one."""


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


def preferred_layout(task: Task) -> Layout | None:
    """The layout the task's cached inversion recorded (None when there is none to reproduce).

    A reconstruction must run in it to be bit-exact, whatever the worker's policy would choose; other
    work prefers it (so that ``fingerprint_match`` holds) where the policy's choice allows (``place``).
    """
    inversion = _cached(task)
    return None if inversion is None else Layout.of(inversion.fingerprint)


class Seat(NamedTuple):
    """A job a worker is running, as ``place`` sees it."""

    layout: Layout
    movable: bool = False
    """Placed by the policy (not pinned) and young enough to be restarted in another layout."""


def widths(batch_size: int) -> list[int]:
    """The batch sizes an adaptive worker opens: powers of two below ``batch_size``, and ``batch_size``."""
    sizes = [1]
    while sizes[-1] * 2 < batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes + ([batch_size] if batch_size > 1 else [])


def place(
    seats: Mapping[str, Seat],
    *,
    batch_size: int,
    demand: int = 1,
    policy: str = "adaptive",
    preferred: Layout | None = None,
) -> tuple[Layout, dict[str, Layout]]:
    """Where a newly admitted job runs, and which running jobs move with it (docs/benchmarks.md).

    ``seats`` are the jobs running now, ``demand`` the jobs that want to run (running, this one and
    those queued), ``batch_size`` the widest layout; returns the new job's layout and the new layouts
    of the young jobs to restart.

    ``fixed``: every job at ``batch_size``, in ``preferred``'s slot when it is free, else the lowest
    free slot. ``adaptive``, first rule that applies:

    1. A free slot of a running batch no wider than ``batch_size``: it is padding now, so filling it
       costs nothing.
    2. A new batch as wide as the demand (the next width of ``widths`` at or above it). Running
       batches narrower than it whose jobs are all movable are restarted in it, so that a burst that
       arrives one job at a time still ends up in one network call (a lone job runs at batch size 1).

    A job keeps its slot of ``preferred`` when the width chosen is its batch size and the slot is free.
    """
    taken: dict[int, set[int]] = {}
    for seat in seats.values():
        taken.setdefault(seat.layout.batch_size, set()).add(seat.layout.slot)

    def free(width: int) -> list[int]:
        return [s for s in range(width) if s not in taken.get(width, ())]

    def seat_in(width: int, slots: list[int]) -> Layout:
        if preferred is not None and preferred.batch_size == width and preferred.slot in slots:
            return Layout(width, preferred.slot)
        return Layout(width, slots[0] if slots else 0)

    if policy == "fixed":
        return seat_in(batch_size, free(batch_size)), {}
    if policy != "adaptive":
        raise ValueError(f"unknown batch policy {policy!r}")
    running = sorted((w for w in taken if w <= batch_size and free(w)), reverse=True)
    if preferred is not None and preferred.batch_size in running and preferred.slot in free(preferred.batch_size):
        return preferred, {}
    if running:
        return seat_in(running[0], free(running[0])), {}
    width = next((w for w in widths(batch_size) if w >= demand), batch_size)
    layout = seat_in(width, list(range(width)))
    moves: dict[str, Layout] = {}
    slots = [s for s in range(width) if s != layout.slot]
    for narrower in sorted((w for w in taken if w < width), reverse=True):
        group = [job for job, seat in seats.items() if seat.layout.batch_size == narrower]
        if len(group) > len(slots) or not all(seats[job].movable for job in group):
            continue
        for job in sorted(group, key=lambda j: seats[j].layout.slot):
            moves[job] = Layout(width, slots.pop(0))
    return layout, moves


def task_job(model: bdia.DiffusionModel, task: Task, *, gamma_bound: float) -> Job[Outcome]:
    """Invert (unless ``task.cached`` holds the inversion) and, for edits and reconstructions, regenerate."""
    spec = task.spec
    inversion = _cached(task)
    outcome = Outcome(result={}, metrics={"inversion_cached": inversion is not None, "inversion_nfe": 0})
    if inversion is None:
        if task.image is None:
            raise InputsGone(f"the upload of {spec.inversion_id} has expired: submit the image again")
        params = spec.inversion_params().model_copy(update={"model": model.name}).check(gamma_bound)
        upload = imaging.load_image(task.image)
        z0 = imaging.encode(model, imaging.fit_to_working(model, upload))
        inversion = yield from inverting(model, z0, params, layout=task.layout, source=upload)
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
    # Fields the job leaves out (or None) keep their defaults: the controlled, automatically blended edit.
    names = () if reconstruct else EditParams.model_fields
    fields = {name: task.params[name] for name in names if task.params.get(name) is not None}
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
        edit=edit,
        mask=task.mask,
        image_size=imaging.load_image(task.image).size if task.mask is not None and task.image is not None else None,
        layout=task.layout,
    )
    picture = regeneration.image
    outcome.image_png = png(picture)
    if regeneration.mask_image is not None:
        outcome.mask_png = png(regeneration.mask_image)
    outcome.metrics["regenerate_nfe"] = regeneration.nfe
    outcome.metrics["nfe"] = outcome.metrics["inversion_nfe"] + regeneration.nfe
    outcome.result = {
        "content_type": "image/png",
        "width": picture.width,
        "height": picture.height,
        "fingerprint_match": regeneration.fingerprint_match,
    }
    if regeneration.working_image is not None:
        outcome.result["working_width"] = regeneration.working_image.width
        outcome.result["working_height"] = regeneration.working_image.height
    if regeneration.mask_fraction is not None:
        outcome.result["mask_fraction"] = regeneration.mask_fraction
    if reconstruct:
        outcome.result["latent_max_abs_error"] = regeneration.latent_max_abs_error
        outcome.result["exact"] = regeneration.exact
        if regeneration.psnr is not None:  # errors at the upload's size and at the working size
            outcome.result["psnr"] = _finite(regeneration.psnr)
            outcome.result["working_psnr"] = _finite(regeneration.working_psnr)
        else:  # an inversion made before it kept its source: the upload fit to the model's size, if it is left
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


def _finite(value: float | None) -> float | None:
    """A PSNR for JSON: None when the pixels are identical (infinite)."""
    return None if value is None or value == float("inf") else value


def _psnr(model: bdia.DiffusionModel, upload: bytes | None, picture: Any) -> float | None:
    """Pixel PSNR of the reconstruction against the upload fit to the model's size (None if expired)."""
    if upload is None:
        return None
    source = imaging.fit_to_model(imaging.load_image(upload), model.height, model.width)
    value = imaging.psnr(source, picture)
    return value if value != float("inf") else None
