"""The engine's high-level operations: ``invert``, ``regenerate``, ``sample`` and ``roundtrip``.

Each operation has a job form (``inverting``, ``regenerating``, ``sampling``): a generator of network
requests (``bdia.batching``) that builds a level grid and the prompt conditioning for a loaded
model, runs a walk from ``bdia.sampling`` and packages the result. The plain form drives its job
alone; a worker drives many side by side. Exact mode needs deterministic numerics: call
``bdia.configure_determinism`` once after loading the model (the CLI and the worker do).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from . import imaging, numerics
from .batching import Job, Layout, bind, conditioning, drive
from .errors import InvalidParameter
from .grid import LevelGrid
from .inversion import Inversion
from .models import DiffusionModel
from .params import DEFAULT_GAMMA_BOUND, InversionParams, check_gamma
from .sampling import (
    STATE_DTYPES,
    FixedPoint,
    FloatLattice,
    Guide,
    Lattice,
    Pair,
    Progress,
    Walk,
    bdia_invert,
    bdia_sample,
    ddim_invert,
    ddim_sample,
    edict_invert,
    edict_sample,
    lattice_for,
    nfe,
)

Callback = Callable[[Progress], None] | None
Cancel = Callable[[], bool] | None
ImageLike = Image.Image | bytes | str | Path


@dataclass
class Regeneration:
    """An inversion regenerated under a prompt: the clean latent, its image, and how exact it was."""

    z0: torch.Tensor
    image: Image.Image
    nfe: int
    seconds: float
    latent_max_abs_error: float
    fingerprint: dict[str, str]
    fingerprint_match: bool
    exact: bool


@dataclass
class Sample:
    """A sample from noise: the clean latent z0 (UNet latent space), its image and the final pair."""

    z0: torch.Tensor
    image: Image.Image
    pair: tuple[torch.Tensor, torch.Tensor]
    nfe: int
    seconds: float


def invert(
    model: DiffusionModel,
    image: ImageLike,
    prompt: str = "",
    *,
    steps: int = 50,
    strength: float = 1.0,
    guidance_scale: float = 1.0,
    gamma: float = 1.0,
    exact: bool = True,
    method: str = "bdia",
    negative_prompt: str = "",
    state_dtype: str = "float64",
    gamma_bound: float = DEFAULT_GAMMA_BOUND,
    keep_trajectory: bool = True,
    callback: Callback = None,
    cancel: Cancel = None,
) -> Inversion:
    """Invert an image (fit to the model's size) into its latent pair at level round(steps·strength)."""
    params = InversionParams.create(
        model=model.name,
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        strength=strength,
        guidance_scale=guidance_scale,
        gamma=gamma,
        exact=exact,
        method=method,
        state_dtype=state_dtype,
    ).check(gamma_bound)
    picture = imaging.fit_to_model(imaging.load_image(image), model.height, model.width)
    z0 = imaging.encode(model, picture)
    return invert_latent(model, z0, params, keep_trajectory=keep_trajectory, callback=callback, cancel=cancel)


def invert_latent(
    model: DiffusionModel,
    z0: torch.Tensor,
    params: InversionParams,
    *,
    keep_trajectory: bool = True,
    layout: Layout = Layout(),
    callback: Callback = None,
    cancel: Cancel = None,
) -> Inversion:
    """Invert a clean latent ``z0`` ([1, C, h, w], the UNet's latent space) under checked ``params``."""
    job = inverting(model, z0, params, keep_trajectory=keep_trajectory, layout=layout)
    return drive(model, job, callback=callback, cancel=cancel)


def inverting(
    model: DiffusionModel,
    z0: torch.Tensor,
    params: InversionParams,
    *,
    keep_trajectory: bool = True,
    layout: Layout = Layout(),
) -> Job[Inversion]:
    """``invert_latent`` as a job (``bdia.batching``): its network evaluations in ``layout``, run by any driver."""
    started = time.perf_counter()
    grid = LevelGrid.from_scheduler(model.scheduler, params.steps)
    lattice = lattice_for(params.state)
    cond = conditioning(model, grid, params.prompt, params.guidance_scale, params.negative_prompt)
    z0 = lattice.encode(z0.to(model.device))
    walk = inversion_walk(grid, lattice.decode(z0), params, keep_trajectory=keep_trajectory)
    total = nfe(params.method, params.levels, "invert")
    pair = yield from bind(walk, cond, layout, total=total, stage="invert")
    return Inversion(
        params=params,
        z_hi=pair.hi,
        z_lo=pair.lo,
        z0=z0,
        fingerprint=layout_fingerprint(model, layout),
        nfe=total,
        seconds=time.perf_counter() - started,
        trajectory=None if pair.trajectory is None else pair.trajectory.squeeze(1),
    )


def inversion_walk(
    grid: LevelGrid, z0: torch.Tensor, params: InversionParams, *, keep_trajectory: bool = False
) -> Walk[Pair]:
    """The walk inverting ``z0`` (floats, any batch) under ``params``: it returns the lattice pair.

    With ``keep_trajectory`` a BDIA walk's pair also holds the lattice states of levels 0…K.
    """
    lattice, levels = lattice_for(params.state), params.levels
    start = lattice.decode(lattice.encode(z0))
    if params.method == "bdia":
        walk = bdia_invert(
            grid, start, levels=levels, gamma=params.gamma, lattice=lattice, keep_trajectory=keep_trajectory
        )
        return (yield from walk)
    if params.method == "edict":
        return (yield from edict_invert(grid, start, levels=levels))
    z = yield from ddim_invert(grid, start, levels=levels)
    return Pair(z, z.clone())  # two tensors: safetensors refuses shared memory


def regeneration_walk(
    grid: LevelGrid,
    hi: torch.Tensor,
    lo: torch.Tensor,
    params: InversionParams,
    *,
    gamma: float | None = None,
    trajectory: torch.Tensor | list[torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> Walk[torch.Tensor]:
    """The walk regenerating the lattice pair of an inversion under ``params``: it returns z0 as floats.

    ``gamma`` overrides BDIA's γ for this regeneration (a float64 state when the pair is fixed point);
    ``mask`` (boolean, True = may change) keeps the rest on ``trajectory`` at every level.
    """
    lattice, levels = lattice_for(params.state), params.levels
    gamma = params.gamma if gamma is None else float(gamma)
    if gamma != params.gamma:
        if params.method != "bdia":
            raise InvalidParameter("a regeneration's own gamma applies to BDIA inversions only")
        check_gamma(gamma, levels, inverting=False)
        if isinstance(lattice, FixedPoint):  # γ < 1 cannot stay on the integer lattice
            decode, lattice = lattice.decode, FloatLattice(torch.float64)
            hi, lo = decode(hi), decode(lo)
            trajectory = None if trajectory is None else [decode(t) for t in trajectory]
    guide = None
    if mask is not None:
        if params.method != "bdia":
            raise InvalidParameter("masked edits need a BDIA inversion")
        guide = _mask_guide(trajectory, mask)
    return _regeneration(grid, hi, lo, params.method, levels, gamma, lattice, guide)


def _regeneration(
    grid: LevelGrid,
    hi: torch.Tensor,
    lo: torch.Tensor,
    method: str,
    levels: int,
    gamma: float,
    lattice: Lattice,
    guide: Guide | None,
) -> Walk[torch.Tensor]:
    if method == "bdia":
        state = (yield from bdia_sample(grid, hi, lo, start=levels, gamma=gamma, lattice=lattice, guide=guide)).lo
    elif method == "edict":
        state = (yield from edict_sample(grid, hi, lo, start=levels)).hi
    else:
        state = yield from ddim_sample(grid, hi, start=levels)
    return lattice.decode(state)


def layout_fingerprint(model: DiffusionModel, layout: Layout) -> dict[str, str]:
    """The numerics fingerprint of ``model`` computing in ``layout`` (docs/exactness.md)."""
    layout = Layout(*layout)
    return numerics.fingerprint(model, batch_size=layout.batch_size, slot=layout.slot)


def latent_mask(
    mask: ImageLike | torch.Tensor, model: DiffusionModel, *, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """A mask image (white = may change) as a boolean [1, 1, h, w] tensor at latent resolution.

    The mask may have any size but must have the image's aspect ratio (to a pixel of rounding):
    ``image_size`` (width, height) of the image the inversion was made from, or the model's own size
    (the image the inversion holds, and what a regeneration returns), which is always accepted too.
    It is fitted to the model size as the image was. Transparent pixels count as black (keep): the
    mask is composited on black. Anything else is refused with ``InvalidParameter``.
    """
    h, w = model.latent_shape[1:]
    if isinstance(mask, torch.Tensor):
        _check_mask_aspect((int(mask.shape[-1]), int(mask.shape[-2])), (w, h), image_size)
        m = mask.to(torch.float32).reshape(1, 1, *mask.shape[-2:])
        m = torch.nn.functional.interpolate(m, size=(h, w), mode="area")
    else:
        picture = _mask_picture(mask)
        _check_mask_aspect(picture.size, (model.width, model.height), image_size)
        picture = imaging.fit_to_model(picture, model.height, model.width)
        small = picture.resize((w, h), Image.Resampling.BOX)
        m = torch.tensor(list(small.getdata()), dtype=torch.float32).reshape(1, 1, h, w) / 255.0
    return (m > 0.5).to(model.device)


def _mask_picture(mask: ImageLike) -> Image.Image:
    """The mask as greyscale, upright per its EXIF orientation; transparent pixels are black (keep)."""
    picture = mask
    if not isinstance(mask, Image.Image):
        try:
            stream = io.BytesIO(bytes(mask)) if isinstance(mask, (bytes, bytearray, memoryview)) else mask
            picture = Image.open(stream)
            picture.load()
        except Exception:
            imaging.load_image(mask)  # raises the engine's InvalidImage for what cannot be read
            raise
    if picture.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = ImageOps.exif_transpose(picture).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L")
    return imaging.load_image(picture).convert("L")


def _check_mask_aspect(size: tuple[int, int], model_size: tuple[int, int], image_size: tuple[int, int] | None) -> None:
    """Refuse a mask whose aspect ratio is neither the image's nor the model's, beyond a pixel of rounding."""

    def fits(reference: tuple[int, int]) -> bool:
        # Some scale s takes the reference to the mask's size within a pixel on each side.
        (mw, mh), (rw, rh) = size, reference
        return max((mw - 1) / rw, (mh - 1) / rh) < min((mw + 1) / rw, (mh + 1) / rh)

    references = [model_size] if image_size is None else [tuple(image_size), model_size]
    if not any(fits(r) for r in references):
        rw, rh = references[0]
        raise InvalidParameter(
            f"the mask is {size[0]}×{size[1]} but the image is {rw}×{rh}: "
            "a mask may have any size but needs the image's aspect ratio"
        )


def _mask_guide(trajectory: torch.Tensor | list[torch.Tensor] | None, mask: torch.Tensor) -> Guide:
    """Keep every level's state outside the mask on the source trajectory (exact on the fixed-point lattice)."""
    if trajectory is None:
        raise InvalidParameter("a masked edit needs an inversion that kept its trajectory (BDIA, keep_trajectory)")
    return lambda level, state: torch.where(mask, state, trajectory[level].to(state.device).reshape(state.shape))


def regenerate(
    model: DiffusionModel,
    inversion: Inversion,
    prompt: str | None = None,
    *,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    mask: ImageLike | torch.Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    gamma: float | None = None,
    layout: Layout | None = None,
    callback: Callback = None,
    cancel: Cancel = None,
) -> Regeneration:
    """Regenerate from the inversion's pair under ``prompt`` (``None``: the source prompt, a reconstruction).

    With the source prompt, the same guidance and a matching numerics fingerprint, exact mode gives
    the source latent back bit for bit. ``mask`` (white = may change) keeps the rest of the latent
    on the source trajectory at every level; it must have the aspect ratio of the image (``image_size``,
    the source image's (width, height) when known, else the model's size; ``latent_mask``).
    ``layout`` defaults to the one the inversion recorded.

    ``gamma`` (BDIA only) is the regeneration's own γ, by default the inversion's. Sampling damps
    the mismatch between BDIA's two interleaved states by γ per step (docs/numerics.md), so an edit
    regenerated with γ < 1 from an exact γ = 1 inversion loses the colour casts γ = 1 lets through;
    it runs on a float64 state and is never exact.
    """
    job = regenerating(
        model,
        inversion,
        prompt,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        mask=mask,
        image_size=image_size,
        gamma=gamma,
        layout=layout,
    )
    return drive(model, job, callback=callback, cancel=cancel)


def regenerating(
    model: DiffusionModel,
    inversion: Inversion,
    prompt: str | None = None,
    *,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    mask: ImageLike | torch.Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    gamma: float | None = None,
    layout: Layout | None = None,
) -> Job[Regeneration]:
    """``regenerate`` as a job (``bdia.batching``); ``layout`` defaults to the inversion's own."""
    started = time.perf_counter()
    params = inversion.params
    if params.model != model.name:
        raise InvalidParameter(f"this inversion was made with model {params.model!r}, not {model.name!r}")
    layout = Layout(*layout) if layout is not None else (Layout.of(inversion.fingerprint) or Layout())
    inversion = inversion.to(model.device)
    grid = LevelGrid.from_scheduler(model.scheduler, params.steps)
    cond = conditioning(
        model,
        grid,
        params.prompt if prompt is None else prompt,
        params.guidance_scale if guidance_scale is None else guidance_scale,
        params.negative_prompt if negative_prompt is None else negative_prompt,
    )
    mask_tensor = None if mask is None else latent_mask(mask, model, image_size=image_size)
    walk = regeneration_walk(
        grid, inversion.z_hi, inversion.z_lo, params, gamma=gamma, trajectory=inversion.trajectory, mask=mask_tensor
    )
    total = nfe(params.method, params.levels, "sample")
    z0 = yield from bind(walk, cond, layout, total=total, stage="regenerate")
    fingerprint = layout_fingerprint(model, layout)
    match = numerics.fingerprint_id(fingerprint) == inversion.fingerprint_id
    error = float((z0.double() - inversion.lattice.decode(inversion.z0).double()).abs().max())
    return Regeneration(
        z0=z0,
        image=imaging.decode(model, z0),
        nfe=total,
        seconds=time.perf_counter() - started,
        latent_max_abs_error=error,
        fingerprint=fingerprint,
        fingerprint_match=match,
        exact=params.fixed_point and match and (gamma is None or gamma == params.gamma),
    )


def initial_noise(
    model: DiffusionModel, seed: int, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """z_N drawn exactly as diffusers' pipelines draw it from a CPU ``torch.Generator``."""
    from diffusers.utils.torch_utils import randn_tensor

    height, width = height or model.height, width or model.width
    f = model.vae_scale_factor
    if height % f or width % f:
        raise InvalidParameter(f"height and width must be multiples of {f} for this model, got {height}×{width}")
    shape = (1, model.latent_shape[0], height // f, width // f)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
    return noise * model.scheduler.init_noise_sigma


def sample(
    model: DiffusionModel,
    prompt: str = "",
    *,
    seed: int = 0,
    steps: int = 50,
    gamma: float = 1.0,
    guidance_scale: float = 7.5,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    exact: bool = False,
    state_dtype: str = "float64",
    callback: Callback = None,
    cancel: Cancel = None,
) -> Sample:
    """Sample from noise with BDIA (γ = 0 is plain DDIM, identical to diffusers' DDIM pipeline)."""
    job = sampling(
        model,
        prompt,
        seed=seed,
        steps=steps,
        gamma=gamma,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        exact=exact,
        state_dtype=state_dtype,
    )
    return drive(model, job, callback=callback, cancel=cancel)


def sampling(
    model: DiffusionModel,
    prompt: str = "",
    *,
    seed: int = 0,
    steps: int = 50,
    gamma: float = 1.0,
    guidance_scale: float = 7.5,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    exact: bool = False,
    state_dtype: str = "float64",
    layout: Layout = Layout(),
) -> Job[Sample]:
    """``sample`` as a job (``bdia.batching``): its network evaluations in ``layout``, run by any driver."""
    started = time.perf_counter()
    if state_dtype not in STATE_DTYPES:
        raise InvalidParameter(f"state_dtype must be float64 or float32, got {state_dtype!r}")
    check_gamma(gamma, steps, inverting=False)
    grid = LevelGrid.from_scheduler(model.scheduler, steps)
    lattice = lattice_for("fixed-point" if exact and gamma == 1.0 else state_dtype)
    cond = conditioning(model, grid, prompt, guidance_scale, negative_prompt)
    z_n = lattice.encode(initial_noise(model, seed, height, width))
    pair = yield from bind(
        bdia_sample(grid, z_n, gamma=gamma, lattice=lattice), cond, layout, total=steps, stage="sample"
    )
    z0 = lattice.decode(pair.lo)
    return Sample(
        z0=z0,
        image=imaging.decode(model, z0),
        pair=(pair.hi, pair.lo),
        nfe=steps,
        seconds=time.perf_counter() - started,
    )


def roundtrip(
    model: DiffusionModel,
    *,
    method: str = "bdia",
    steps: int = 50,
    gamma: float = 1.0,
    exact: bool = True,
    state_dtype: str = "float64",
    seed: int = 0,
    prompt: str = "",
    guidance_scale: float = 1.0,
    callback: Callback = None,
) -> dict[str, Any]:
    """Invert a latent and regenerate it; report the error of the recovered latent.

    The latent is a sample of the model itself (plain DDIM, ``seed``), so the round trip runs
    on the kind of latent the model produces. Its own sampling cost is not counted.
    """
    z0 = sample(model, prompt, seed=seed, steps=steps, gamma=0.0, guidance_scale=guidance_scale).z0
    params = InversionParams.create(
        model=model.name,
        prompt=prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        gamma=gamma,
        exact=exact,
        method=method,
        state_dtype=state_dtype,
    ).check()
    started = time.perf_counter()
    inversion = invert_latent(model, z0, params, keep_trajectory=False, callback=callback)
    regen = regenerate(model, inversion, callback=callback)
    seconds = time.perf_counter() - started
    reference = inversion.lattice.decode(inversion.z0).double()
    error = regen.z0.double() - reference
    return {
        "method": method,
        "steps": steps,
        "gamma": gamma,
        "exact": params.fixed_point,
        "state": params.state,
        "nfe": inversion.nfe + regen.nfe,
        "max_abs_error": float(error.abs().max()),
        "rel_error": float(error.norm() / reference.norm()),
        "bit_exact": bool(torch.equal(regen.z0.double(), reference)),
        "latent_std": inversion.latent_std,
        "seconds": seconds,
        "fingerprint_id": inversion.fingerprint_id,
    }


__all__ = [
    "Regeneration",
    "Sample",
    "initial_noise",
    "invert",
    "invert_latent",
    "inverting",
    "latent_mask",
    "layout_fingerprint",
    "regenerate",
    "regenerating",
    "roundtrip",
    "sample",
    "sampling",
]
