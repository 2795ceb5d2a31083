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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from . import imaging, numerics
from .batching import Conditioning, Job, Layout, bind, conditioning, drive
from .editing import CONTROLLED_GAMMA, EditPlan, edit_walk, target_lattice
from .errors import InvalidParameter
from .grid import LevelGrid
from .inversion import Inversion
from .models import DiffusionModel
from .params import DEFAULT_GAMMA_BOUND, EditParams, InversionParams, check_gamma, flow_edit_problem
from .sampling import (
    STATE_DTYPES,
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
    """An inversion regenerated under a prompt: the clean latent, its image, and how exact it was.

    ``image`` has the source image's size when the inversion holds the source (``Inversion.source``):
    the source itself when the latent came back bit for bit, else the decoded ``working_image``
    resized to it, with the source's own pixels (bit for bit) outside ``mask_image``. An inversion
    without a source gives the working image, with the source latent's decoding outside ``mask_image``.
    """

    z0: torch.Tensor
    image: Image.Image
    nfe: int
    seconds: float
    latent_max_abs_error: float
    fingerprint: dict[str, str]
    fingerprint_match: bool
    exact: bool
    working_image: Image.Image | None = None
    """The decoded latent at the working size (``imaging.working_size``)."""
    mask: torch.Tensor | None = None
    """The mask actually used: boolean [1, 1, h, w] at latent resolution, True = may change."""
    mask_fraction: float | None = None
    """The fraction of ``image``'s pixels ``mask_image`` covers (None without a mask)."""
    mask_image: Image.Image | None = None
    """The pixels of ``mask`` (at ``image``'s size, dilated: ``imaging.mask_image``) that the edit changed by more
    than ``EditParams.unchanged_tolerance``: white = differs from the source, black = the source's own pixel."""
    psnr: float | None = None
    """PSNR (dB) of ``image`` against the source at its size (inf: identical; None without a source)."""
    working_psnr: float | None = None
    """PSNR (dB) of ``working_image`` against the source resized to the working size (None without a source)."""


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
    steps: int | None = None,
    strength: float | None = None,
    guidance_scale: float | None = None,
    gamma: float | None = None,
    exact: bool | None = None,
    method: str | None = None,
    negative_prompt: str | None = None,
    state_dtype: str | None = None,
    gamma_bound: float = DEFAULT_GAMMA_BOUND,
    keep_trajectory: bool = True,
    callback: Callback = None,
    cancel: Cancel = None,
) -> Inversion:
    """Invert an image into its latent pair at level round(steps·strength).

    The image is resized whole to its working size (``imaging.working_size``: its aspect ratio within
    the model's pixel budget) and kept in the inversion, so that edits return an image of its size.

    Each setting left out (None) is the model's default (``model.defaults``: its folder's
    ``bdia_defaults.json``, else the built-in ``bdia.params`` defaults)."""
    given = dict(steps=steps, strength=strength, guidance_scale=guidance_scale, gamma=gamma, exact=exact)
    given.update(method=method, negative_prompt=negative_prompt, state_dtype=state_dtype)
    params = InversionParams.create(model=model.name, prompt=prompt, **model.defaults.inversion(**given))
    params.check(gamma_bound)
    upload = imaging.load_image(image)
    z0 = imaging.encode(model, imaging.fit_to_working(model, upload))
    return invert_latent(
        model, z0, params, keep_trajectory=keep_trajectory, source=upload, callback=callback, cancel=cancel
    )


def invert_latent(
    model: DiffusionModel,
    z0: torch.Tensor,
    params: InversionParams,
    *,
    keep_trajectory: bool = True,
    layout: Layout = Layout(),
    source: Image.Image | None = None,
    callback: Callback = None,
    cancel: Cancel = None,
) -> Inversion:
    """Invert a clean latent ``z0`` ([1, C, h, w], the UNet's latent space) under checked ``params``.

    ``source``: the image ``z0`` was encoded from (at any size), kept in the inversion (``Inversion.source``).
    """
    job = inverting(model, z0, params, keep_trajectory=keep_trajectory, layout=layout, source=source)
    return drive(model, job, callback=callback, cancel=cancel)


def inverting(
    model: DiffusionModel,
    z0: torch.Tensor,
    params: InversionParams,
    *,
    keep_trajectory: bool = True,
    layout: Layout = Layout(),
    source: Image.Image | None = None,
) -> Job[Inversion]:
    """``invert_latent`` as a job (``bdia.batching``): its network evaluations in ``layout``, run by any driver."""
    started = time.perf_counter()
    grid = model.level_grid(params.steps, tuple(z0.shape[-2:]))
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
        source=None if source is None else imaging.png_bytes(source.convert("RGB")),
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
    levels = params.levels
    gamma = params.gamma if gamma is None else float(gamma)
    lattice, hi, lo, trajectory = target_lattice(params, gamma, hi, lo, trajectory)
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
    mask: ImageLike | torch.Tensor,
    model: DiffusionModel,
    *,
    image_size: tuple[int, int] | None = None,
    working_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A mask image (white = may change) as a boolean [1, 1, h, w] tensor at latent resolution.

    The mask may have any size but must have the image's aspect ratio (to a pixel of rounding):
    ``image_size`` (width, height) of the image the inversion was made from, or the working size
    (the image the inversion holds), which is always accepted too. It is fitted as the image was:
    resized whole to ``working_size`` (width, height; ``imaging.working_size``), or, without one (an
    inversion made before working sizes), fitted to the model's native size by ``fit_to_model``.
    Transparent pixels count as black (keep): the mask is composited on black. Anything else is
    refused with ``InvalidParameter``.
    """
    f = model.vae_scale_factor
    width, height = working_size or (model.width, model.height)
    h, w = height // f, width // f
    if isinstance(mask, torch.Tensor):
        _check_mask_aspect((int(mask.shape[-1]), int(mask.shape[-2])), (w, h), image_size)
        m = mask.to(torch.float32).reshape(1, 1, *mask.shape[-2:])
        m = torch.nn.functional.interpolate(m, size=(h, w), mode="area")
    else:
        picture = _mask_picture(mask)
        _check_mask_aspect(picture.size, (width, height), image_size)
        if working_size is None:
            picture = imaging.fit_to_model(picture, height, width)
        else:
            picture = imaging.resize(picture, (width, height))
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
    edit: EditParams | None = None,
    layout: Layout | None = None,
    callback: Callback = None,
    cancel: Cancel = None,
) -> Regeneration:
    """Regenerate from the inversion's pair under ``prompt`` (``None``: the source prompt, a reconstruction).

    With the source prompt, the same guidance and a matching numerics fingerprint, exact mode gives
    the source latent back bit for bit. ``mask`` (white = may change) keeps the rest of the latent
    on the source trajectory at every level; it must have the aspect ratio of the image (the inversion's
    source, else ``image_size``, the source image's (width, height) when known; ``latent_mask``).
    ``layout`` defaults to the one the inversion recorded. The result has the source's size, with the
    source's own pixels outside the mask (``Regeneration``).

    ``gamma`` (BDIA only) is the regeneration's own γ, by default the inversion's. Sampling damps
    the mismatch between BDIA's two interleaved states by γ per step (docs/numerics.md), so an edit
    regenerated with γ < 1 from an exact γ = 1 inversion loses the colour casts γ = 1 lets through;
    it runs on a float64 state and is never exact.

    An edit (a ``prompt`` other than the source's) takes what it leaves out from the model's edit defaults
    (``model.defaults.edit``) before the inversion's; a reconstruction keeps the inversion's settings.
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
        edit=edit,
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
    edit: EditParams | None = None,
    layout: Layout | None = None,
) -> Job[Regeneration]:
    """``regenerate`` as a job (``bdia.batching``); ``layout`` defaults to the inversion's own."""
    started = time.perf_counter()
    params = inversion.params
    fields = {} if edit is None else edit.model_dump(exclude_unset=True)
    named = dict(prompt=prompt, guidance_scale=guidance_scale, negative_prompt=negative_prompt, edit_gamma=gamma)
    fields.update({name: value for name, value in named.items() if value is not None})
    given = model.defaults.edit_for(EditParams.create(**fields), params.prompt)
    if params.method != "bdia" and "edit_gamma" not in fields:  # a model's edit γ is for its BDIA inversions
        given = given.model_copy(update={"edit_gamma": None})
    prompt, guidance_scale, negative_prompt, gamma = (
        given.prompt,
        given.guidance_scale,
        given.negative_prompt,
        given.edit_gamma,
    )
    if params.model != model.name:
        raise InvalidParameter(f"this inversion was made with model {params.model!r}, not {model.name!r}")
    layout = Layout(*layout) if layout is not None else (Layout.of(inversion.fingerprint) or Layout())
    inversion = inversion.to(model.device)
    grid = model.level_grid(params.steps, tuple(inversion.z_hi.shape[-2:]))
    cond = conditioning(
        model,
        grid,
        params.prompt if prompt is None else prompt,
        params.guidance_scale if guidance_scale is None else guidance_scale,
        params.negative_prompt if negative_prompt is None else negative_prompt,
    )
    mask_tensor = None if mask is None else _inversion_mask(mask, model, inversion, image_size)
    global_edit = False
    total = nfe(params.method, params.levels, "sample")
    plan = _edit_plan(model, inversion, grid, given, mask_tensor, gamma)
    if plan is None:  # a reconstruction, or an edit without control or blending: the plain walk
        walk = regeneration_walk(
            grid, inversion.z_hi, inversion.z_lo, params, gamma=gamma, trajectory=inversion.trajectory, mask=mask_tensor
        )
        z0 = yield from bind(walk, cond, layout, total=total, stage="regenerate")
    else:
        gamma, total = plan.gamma, total + plan.extra_calls
        controlled = _with_source(model, cond, params, plan)
        z0 = yield from bind(plan.walk, controlled, layout, total=total, stage="regenerate", plain=cond)
        mask_tensor, global_edit = plan.blender.mask, plan.blender.source == "global"
    fingerprint = layout_fingerprint(model, layout)
    match = numerics.fingerprint_id(fingerprint) == inversion.fingerprint_id
    error = float((z0.double() - inversion.lattice.decode(inversion.z0).double()).abs().max())
    return Regeneration(
        z0=z0,
        nfe=total,
        seconds=time.perf_counter() - started,
        latent_max_abs_error=error,
        fingerprint=fingerprint,
        fingerprint_match=match,
        exact=params.fixed_point and match and (gamma is None or gamma == params.gamma),
        **_result_images(
            model,
            inversion,
            z0,
            mask_tensor,
            unchanged=error == 0.0,
            tolerance=given.unchanged_tolerance,
            whole=global_edit,
        ),
    )


def _edit_plan(
    model: DiffusionModel,
    inversion: Inversion,
    grid: LevelGrid,
    edit: EditParams,
    mask: torch.Tensor | None,
    gamma: float | None,
) -> EditPlan | None:
    """The controlled edit (``bdia.editing``) ``edit`` asks for; None for a reconstruction (the source prompt),
    an EDICT inversion, a denoiser other than a UNet2DConditionModel, or an edit that turns both control
    and blending off (or gives its own mask without control): those take the plain regeneration walk. A flow
    model (SD 3, Flux) edits plainly: asking it for control or an automatic mask raises ``InvalidParameter``."""
    params = inversion.params
    target = params.prompt if edit.prompt is None else edit.prompt
    if target != params.prompt and model.prediction_type == "flow":  # a plain walk: attention control is UNet-only
        if problem := flow_edit_problem(edit, masked=mask is not None):
            raise InvalidParameter(f"{problem[0]} {problem[1]}")
        return None
    if target == params.prompt or params.method == "edict" or type(model.unet).__name__ != "UNet2DConditionModel":
        return None
    if edit.control == "none" and (edit.mask_mode == "none" or mask is not None):
        return None
    if params.method == "bdia":
        gamma = CONTROLLED_GAMMA if gamma is None else float(gamma)
    return edit_walk(
        model.tokenizer,
        grid,
        params,
        edit,
        params.prompt,
        target,
        inversion.z_hi,
        inversion.z_lo,
        inversion.trajectory,
        (int(inversion.z_hi.shape[-2]), int(inversion.z_hi.shape[-1])),
        gamma=params.gamma if gamma is None else gamma,
        z0=inversion.lattice.decode(inversion.z0),
        mask=mask,
    )


def _with_source(model: DiffusionModel, cond: Conditioning, params: InversionParams, plan: EditPlan) -> Conditioning:
    """``cond`` with a controlled edit's source rows: the source prompt alone (an exact source branch), or
    guided like the inversion (a regenerated one); extra per-row inputs follow the same rows."""
    parts = [model.encode([params.prompt])]
    scale = 1.0
    if plan.source_rows == "guided" and params.guidance_scale != 1:
        parts.insert(0, model.encode([params.negative_prompt], negative=True))
        scale = params.guidance_scale
    added = {
        key: torch.cat([rows, *(p.added[key] if key in p.added else rows[-1:] for p in parts)])
        for key, rows in cond.added.items()
    }
    source = torch.cat([p.embeddings for p in parts])
    return replace(cond, source=source, control=plan.control, source_guidance=scale, added=added)


def _inversion_mask(
    mask: ImageLike | torch.Tensor, model: DiffusionModel, inversion: Inversion, image_size: tuple[int, int] | None
) -> torch.Tensor:
    """``latent_mask`` for an inversion: checked against its source's size, fitted to its working size."""
    f = model.vae_scale_factor
    working = (int(inversion.z0.shape[-1]) * f, int(inversion.z0.shape[-2]) * f)
    if inversion.source is None:  # made before working sizes: the native size, cropped as its image was
        return latent_mask(mask, model, image_size=image_size)
    return latent_mask(mask, model, image_size=inversion.source_size, working_size=working)


def _result_images(
    model: DiffusionModel,
    inversion: Inversion,
    z0: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    unchanged: bool,
    tolerance: int = 0,
    whole: bool = False,
) -> dict[str, Any]:
    """A regeneration's images (``Regeneration``'s image fields) from its latent ``z0`` and the mask it used.

    With the inversion's source: an ``unchanged`` latent (bit for bit the source's) gives the source
    itself; anything else is the decoded working image resized to the source's size. Without a source
    the reference is the source latent's own decoding, at the working size. Where there is a mask, the
    reference's pixels are pasted back outside it (upsampled and dilated), and inside it wherever the
    edit changed a pixel by at most ``tolerance`` levels (``imaging.changed_within``): ``mask_image``
    shows the pixels that differ from the reference. A ``whole`` (global) edit has the whole image as
    its mask there.
    """
    working = imaging.decode(model, z0)
    source = inversion.source_image()
    fields: dict[str, Any] = {"working_image": working, "mask": mask, "mask_image": None, "mask_fraction": None}
    image = working if source is None else source if unchanged else imaging.resize(working, source.size)
    if mask is not None:
        region = imaging.mask_image(mask, image.size)
    elif whole and tolerance > 0:
        region = Image.new("L", image.size, 255)
    else:
        region = None
    if region is not None:
        reference = source
        if reference is None:
            reference = imaging.decode(model, inversion.lattice.decode(inversion.z0).to(z0))
        drawn = imaging.changed_within(image, reference, region, tolerance)
        image = imaging.paste_outside(image, reference, drawn)
        fields.update(mask_image=drawn, mask_fraction=imaging.covered(drawn))
    if source is None:
        return {**fields, "image": image}
    fields["psnr"] = imaging.psnr(image, source)
    fields["working_psnr"] = imaging.psnr(working, imaging.resize(source, working.size))
    return {**fields, "image": image}


def initial_noise(
    model: DiffusionModel, seed: int, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """z_N drawn exactly as diffusers' pipelines draw it from a CPU ``torch.Generator``."""
    from diffusers.utils.torch_utils import randn_tensor

    height, width = height or model.height, width or model.width
    f = model.vae_scale_factor
    step = f * (model.conditioner.patch_size(model) if hasattr(model.conditioner, "patch_size") else 1)
    if height % step or width % step:
        raise InvalidParameter(f"height and width must be multiples of {step} for this model, got {height}×{width}")
    shape = (1, model.latent_shape[0], height // f, width // f)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
    return noise * getattr(model.scheduler, "init_noise_sigma", 1.0)  # flow matching: none (unit noise)


def sample(
    model: DiffusionModel,
    prompt: str = "",
    *,
    seed: int = 0,
    steps: int | None = None,
    gamma: float | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    exact: bool = False,
    state_dtype: str = "float64",
    callback: Callback = None,
    cancel: Cancel = None,
) -> Sample:
    """Sample from noise with BDIA (γ = 0 is plain DDIM, identical to diffusers' DDIM pipeline).

    ``steps``, ``gamma`` and ``guidance_scale`` left out (None) are the model's (``model.defaults.sample``)."""
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
    steps: int | None = None,
    gamma: float | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    exact: bool = False,
    state_dtype: str = "float64",
    layout: Layout = Layout(),
) -> Job[Sample]:
    """``sample`` as a job (``bdia.batching``): its network evaluations in ``layout``, run by any driver."""
    started = time.perf_counter()
    chosen = model.defaults.sampling(steps=steps, gamma=gamma, guidance_scale=guidance_scale)
    steps, gamma, guidance_scale = chosen["steps"], chosen["gamma"], chosen["guidance_scale"]
    if state_dtype not in STATE_DTYPES:
        raise InvalidParameter(f"state_dtype must be float64 or float32, got {state_dtype!r}")
    check_gamma(gamma, steps, inverting=False)
    noise = initial_noise(model, seed, height, width)
    grid = model.level_grid(steps, tuple(noise.shape[-2:]))
    lattice = lattice_for("fixed-point" if exact and gamma == 1.0 else state_dtype)
    cond = conditioning(model, grid, prompt, guidance_scale, negative_prompt)
    z_n = lattice.encode(noise)
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
    method: str | None = None,
    steps: int | None = None,
    gamma: float | None = None,
    exact: bool | None = None,
    state_dtype: str | None = None,
    seed: int = 0,
    prompt: str = "",
    guidance_scale: float | None = None,
    callback: Callback = None,
) -> dict[str, Any]:
    """Invert a latent and regenerate it; report the error of the recovered latent.

    The latent is a sample of the model itself (plain DDIM, ``seed``), so the round trip runs
    on the kind of latent the model produces. Its own sampling cost is not counted. Settings left out
    (None) are the model's inversion defaults (``model.defaults``).
    """
    given = dict(method=method, steps=steps, gamma=gamma, exact=exact, state_dtype=state_dtype)
    chosen = model.defaults.inversion(**given, guidance_scale=guidance_scale, strength=1.0, negative_prompt="")
    params = InversionParams.create(model=model.name, prompt=prompt, **chosen).check()
    method, steps, gamma = params.method, params.steps, params.gamma
    z0 = sample(model, prompt, seed=seed, steps=steps, gamma=0.0, guidance_scale=params.guidance_scale).z0
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
