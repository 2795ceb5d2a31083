"""Many walks, one network call: the batched evaluator behind continuous batching (docs/exactness.md).

A walk (``bdia.sampling``) yields ``(z, level)`` and receives ε. ``bind`` turns it into a
*job*: a generator of ``Request``s that also carry the job's conditioning (grid, prompt
embeddings, guidance scale) and its numerics ``Layout``. ``evaluate`` answers a list of
requests from different jobs — each with its own level, grid, prompts, guidance and state
dtype — in as few network calls as the layouts allow, and returns each job's ε̂ through
``guided_eps``.

Exactness: the bits of a network output depend on the batch size and on the sample's slot,
and not on what shares the batch once those are fixed. Every job therefore keeps one
``Layout(batch_size, slot)`` for its whole life, and every call ``evaluate`` makes has exactly
``batch_size`` rows per guidance half, the job's rows at its slot (padding fills the slots no
job uses). A request's ε̂ is then bit-identical to ``Denoiser(batch_size=…, slot=…)``'s, alone
or in any company, so the layout recorded in the fingerprint is the whole story.

Controlled edits (docs/editing.md) add their source branch's rows as extra halves and share calls
only with other controlled edits; their attention is computed job by job on the job's own rows
(``bdia.attention``), so the same argument holds for them. Every other call is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import torch

from .attention import AttentionControl, Group, controlled
from .errors import Canceled, InvalidParameter
from .grid import LevelGrid
from .models import DiffusionModel
from .sampling import Progress, Walk

Tensor = torch.Tensor
T = TypeVar("T")


class Layout(NamedTuple):
    """Where a job's sample sits in every network call: ``slot`` of ``batch_size`` rows per guidance half."""

    batch_size: int = 1
    slot: int = 0

    def check(self) -> Layout:
        b, s = self.batch_size, self.slot
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InvalidParameter(f"batch size must be a positive integer, got {b!r}")
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < b:
            raise InvalidParameter(f"slot must be in 0…{b - 1} for batch size {b}, got {s!r}")
        return self

    @classmethod
    def of(cls, fingerprint: dict[str, str] | None) -> Layout | None:
        """The layout a numerics fingerprint records (None when it records none)."""
        try:
            return cls(int(fingerprint["batch_size"]), int(fingerprint["slot"])).check()  # type: ignore[index]
        except (KeyError, TypeError, ValueError, InvalidParameter):
            return None


@dataclass(frozen=True, eq=False)
class Conditioning:
    """What a job's network rows are conditioned on: its grid, prompt embeddings and guidance scale.

    ``embeddings`` is [halves, L, D]: [uncond, cond] when guided (scale ≠ 1), else [cond].
    ``added`` holds the model family's extra per-row UNet inputs (``bdia.families``; SDXL's pooled
    ``text_embeds``), each [all halves, …]: the rows of ``embeddings``, then those of ``source``.
    """

    grid: LevelGrid
    embeddings: Tensor
    guidance_scale: float = 1.0
    source: Tensor | None = None
    """A controlled edit's source-branch rows [S, L, D] ([cond], or [uncond, cond] with ``source_guidance``)."""
    control: AttentionControl | None = None
    """The edit's attention control; its requests' ``z`` is [target, source] (docs/editing.md)."""
    source_guidance: float = 1.0
    added: dict[str, Tensor] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1

    @property
    def target_halves(self) -> int:
        return 2 if self.guided else 1

    @property
    def halves(self) -> int:
        return self.target_halves + (0 if self.source is None else self.source.shape[0])


def conditioning(
    model: DiffusionModel, grid: LevelGrid, prompt: str, guidance_scale: float = 1.0, negative_prompt: str = ""
) -> Conditioning:
    """Encode a job's prompts once (each separately, like ``Denoiser`` and diffusers)."""
    if grid.prediction_type != model.prediction_type:
        raise InvalidParameter(
            f"the level grid is for {grid.prediction_type} but {model.name!r} predicts {model.prediction_type}"
        )
    guidance_scale = float(guidance_scale)
    distilled = getattr(model.conditioner, "distilled_guidance", False)
    halves = [model.encode([negative_prompt], negative=True)] if guidance_scale != 1 and not distilled else []
    halves.append(model.encode([prompt]))
    added = {key: torch.cat([h.added[key] for h in halves]) for key in halves[0].added}
    if distilled:  # Flux: the guidance is a network input of the one row, no unconditional half (bdia.flow)
        added["guidance"] = torch.full((1, 1), guidance_scale, dtype=torch.float32)
        guidance_scale = 1.0
    return Conditioning(grid, torch.cat([h.embeddings for h in halves]), guidance_scale, added=added)


class Request(NamedTuple):
    """One network evaluation a job needs: ε̂(z, level) under ``cond``, computed in ``layout``."""

    z: Tensor
    level: int
    cond: Conditioning
    layout: Layout
    progress: Progress


#: A job: yields requests, receives ε̂ for each, returns its result.
Job = Generator[Request, Tensor, T]


def bind(
    walk: Walk[T], cond: Conditioning, layout: Layout, *, total: int, stage: str, plain: Conditioning | None = None
) -> Job[T]:
    """A walk as a job: each (z, level) it yields becomes a ``Request`` in ``layout`` under ``cond``.

    A controlled edit's walk (``cond.control``) yields [target, source] rows while it needs its source
    branch and the target's row alone afterwards: those requests go under ``plain`` (no source rows).
    """
    layout = Layout(*layout).check()
    step = 0
    try:
        request = next(walk)
        while True:
            step += 1
            c = plain if plain is not None and request[0].shape[0] == 1 else cond
            eps = yield Request(request[0], request[1], c, layout, Progress(step, total, stage))
            request = walk.send(eps)
    except StopIteration as done:
        return done.value


def guided_eps(raw: torch.Tensor, z: torch.Tensor, level: int, grid: LevelGrid, guidance_scale: float) -> torch.Tensor:
    """ε̂ for one sample from its raw network rows ([uncond, cond] when guided, else [cond]).

    The guidance combine is diffusers' arithmetic in the network dtype; a v prediction is then
    converted with ε = α_i·v + σ_i·z in float64 (docs/numerics.md). Returns ε̂ in z's dtype and device.
    """
    rows = 2 if guidance_scale != 1 else 1
    if raw.shape[0] != rows:
        raise ValueError(f"expected {rows} raw row(s) for guidance scale {guidance_scale}, got {raw.shape[0]}")
    if rows == 2:
        uncond, cond = raw.chunk(2)
        raw = uncond + guidance_scale * (cond - uncond)
    out = raw.to(z.device)
    if grid.prediction_type == "v_prediction":
        out = grid.alpha(level) * out.to(torch.float64) + grid.sigma(level) * z.to(torch.float64)
    return out.to(z.dtype)


# --- the batched call --------------------------------------------------------------------------


def plan(requests: Sequence[Request]) -> list[list[int]]:
    """Group requests into network calls: one layout (batch size, halves) per call, one job per slot.

    Returns the calls as lists of indices into ``requests``, in order of first appearance.
    Jobs that share a batch size, guidance and latent shape (images of one working size) and sit in distinct
    slots share one call; controlled edits (their rows: target, then source) share calls only with
    controlled edits of the same row layout.
    """
    calls: list[tuple[tuple[int, int], set[int], list[int]]] = []
    for index, request in enumerate(requests):
        c = request.cond
        key = (request.layout.batch_size, c.halves, c.control is not None, c.target_halves, tuple(request.z.shape))
        for call_key, slots, members in calls:
            if call_key == key and request.layout.slot not in slots:
                slots.add(request.layout.slot)
                members.append(index)
                break
        else:
            calls.append((key, {request.layout.slot}, [index]))
    return [members for _, _, members in calls]


def _call(model: DiffusionModel, requests: Sequence[Request]) -> list[Tensor]:
    """One network call for requests of one layout in distinct slots; each request's raw rows."""
    if requests[0].cond.control is not None:
        return _controlled_call(model, requests)
    batch, halves = requests[0].layout.batch_size, requests[0].cond.halves
    shape = requests[0].z.shape[1:]
    first = requests[0]
    # Padding: zeros at the first request's timestep and prompts (neighbours do not change the bits).
    x = torch.zeros((batch, *shape), device=model.device, dtype=model.dtype)
    t = torch.full((batch,), first.cond.grid.timestep(first.level), device=model.device, dtype=torch.float64)
    emb = _spread(first.cond.embeddings, batch, model.device)  # [halves, batch, L, D]
    added = {key: _spread(rows, batch, model.device) for key, rows in first.cond.added.items()}
    for r in requests:
        if r.z.ndim != 4 or r.z.shape[0] != 1 or r.z.shape[1:] != shape:
            raise InvalidParameter(f"requests in one call need one [1, C, h, w] shape, got {tuple(r.z.shape)}")
        s = r.layout.slot
        x[s] = r.z[0].to(model.device, model.dtype)
        t[s] = r.cond.grid.timestep(r.level)
        emb[:, s] = r.cond.embeddings.to(model.device)
        for key, rows in added.items():
            rows[:, s] = r.cond.added[key].to(model.device)
    flat = {key: rows.flatten(0, 1) for key, rows in added.items()}
    out = model.predict(x.repeat(halves, 1, 1, 1), t.repeat(halves), emb.flatten(0, 1), flat)
    return [out[r.layout.slot :: batch] for r in requests]


def evaluate(model: DiffusionModel, requests: Sequence[Request]) -> list[Tensor]:
    """ε̂ for every request (in z's dtype and device), in as few network calls as ``plan`` allows."""
    eps: list[Tensor | None] = [None] * len(requests)
    for members in plan(requests):
        group = [requests[i] for i in members]
        for i, r, raw in zip(members, group, _call(model, group), strict=True):
            eps[i] = (
                _controlled_eps(raw, r)
                if r.cond.control is not None
                else guided_eps(raw, r.z, r.level, r.cond.grid, r.cond.guidance_scale)
            )
    return eps  # type: ignore[return-value]


def _controlled_call(model: DiffusionModel, requests: Sequence[Request]) -> list[Tensor]:
    """One call for controlled edits: rows [target halves…, source halves…] × batch, each job's attention
    computed on its own rows under its control (``bdia.attention``); each request's raw rows."""
    batch, halves = requests[0].layout.batch_size, requests[0].cond.halves
    shape = requests[0].z.shape[1:]
    first = requests[0]
    x = torch.zeros((halves, batch, *shape), device=model.device, dtype=model.dtype)
    t = torch.full((batch,), first.cond.grid.timestep(first.level), device=model.device, dtype=torch.float64)
    emb = _spread(_all_embeddings(first.cond), batch, model.device)
    added = {key: _spread(rows, batch, model.device) for key, rows in first.cond.added.items()}
    groups = []
    for r in requests:
        if r.cond.control is None or r.z.ndim != 4 or r.z.shape[0] != 2 or r.z.shape[1:] != shape:
            got = tuple(r.z.shape)
            raise InvalidParameter(f"controlled requests in one call need one [2, C, h, w] shape, got {got}")
        s, th = r.layout.slot, r.cond.target_halves
        x[:th, s] = r.z[0].to(model.device, model.dtype)
        x[th:, s] = r.z[1].to(model.device, model.dtype)
        t[s] = r.cond.grid.timestep(r.level)
        emb[:, s] = _all_embeddings(r.cond).to(model.device)
        for key, extra in added.items():
            extra[:, s] = r.cond.added[key].to(model.device)
        rows = [h * batch + s for h in range(halves)]
        groups.append(Group(r.cond.control, rows[0] if th == 2 else None, rows[th - 1], rows[-1], tuple(rows[th:-1])))
    flat = {key: extra.flatten(0, 1) for key, extra in added.items()}
    with controlled(model.unet, groups):
        out = model.predict(x.flatten(0, 1), t.repeat(halves), emb.flatten(0, 1), flat)
    return [out[r.layout.slot :: batch] for r in requests]


def _spread(rows: Tensor, batch: int, device: torch.device) -> Tensor:
    """A job's rows [halves, …] repeated to [halves, batch, …]; padding slots keep these rows."""
    rows = rows.to(device)
    return rows.unsqueeze(1).repeat(1, batch, *([1] * (rows.ndim - 1)))


def _all_embeddings(cond: Conditioning) -> Tensor:
    return cond.embeddings if cond.source is None else torch.cat([cond.embeddings, cond.source.to(cond.embeddings)])


def _controlled_eps(raw: Tensor, r: Request) -> Tensor:
    """A controlled request's [ε̂ target, ε̂ source, raw target cond, raw source cond] (z's dtype and device)."""
    th, grid = r.cond.target_halves, r.cond.grid
    target = guided_eps(raw[:th], r.z[:1], r.level, grid, r.cond.guidance_scale)
    source = guided_eps(raw[th:], r.z[1:], r.level, grid, r.cond.source_guidance)
    cond_t = guided_eps(raw[th - 1 : th], r.z[:1], r.level, grid, 1.0)
    cond_s = guided_eps(raw[-1:], r.z[1:], r.level, grid, 1.0)
    return torch.cat([target, source, cond_t, cond_s])


# --- driving jobs: one driver, for one job or many ----------------------------------------------


class Lane(Generic[T]):
    """A job advanced one network evaluation at a time, alone (``drive``) or side by side (``advance``).

    After ``start`` and after each ``advance`` a lane is pending (``request`` set), ``done``
    (``result``) or failed (``error``); ``progress`` is that of its latest evaluation.
    """

    def __init__(self, job: Job[T]) -> None:
        self.job = job
        self.started = False
        self.request: Request | None = None
        self.progress: Progress | None = None
        self.evaluations = 0
        """Network evaluations this lane has received (its NFE so far)."""
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    @property
    def live(self) -> bool:
        return not self.done and self.error is None

    def start(self) -> None:
        """Run the job up to its first network request (or its end)."""
        if not self.started:
            self._resume(None)

    def _resume(self, eps: Tensor | None) -> None:
        try:
            self.request = self.job.send(eps) if self.started else next(self.job)
            self.started = True
        except StopIteration as finished:
            self.started, self.request, self.done, self.result = True, None, True, finished.value
        except Exception as exc:  # the job failed, not the batch
            self.started, self.request, self.error = True, None, exc

    def close(self) -> None:
        """Abandon the job (its generator is closed; nothing more is computed for it)."""
        self.job.close()
        self.request = None


def drive(
    model: DiffusionModel,
    job: Job[T],
    *,
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> T:
    """Run one job to its end alone, with the ``Lane`` and ``advance`` a worker uses for many.

    ``cancel`` is checked before every network evaluation; ``callback`` hears each one's progress.
    """
    lane = Lane(job)
    lane.start()
    while lane.live:
        if cancel is not None and cancel():
            lane.close()
            p = lane.request.progress  # type: ignore[union-attr]
            raise Canceled(f"canceled during {p.stage} at step {p.step - 1}/{p.total}")
        before = lane.evaluations
        advance(model, [lane])
        if callback is not None and lane.evaluations > before:
            callback(lane.progress)  # type: ignore[arg-type]
    if lane.error is not None:
        raise lane.error
    return lane.result  # type: ignore[return-value]


def drive_together(model: DiffusionModel, jobs: Sequence[Job[T]]) -> list[T]:
    """Run ``jobs`` to their ends side by side (``advance``: one shared network call per step); their results in
    order, or the first lane's error raised."""
    lanes = [Lane(job) for job in jobs]
    while any(lane.live for lane in lanes):
        advance(model, lanes)
    for lane in lanes:
        if lane.error is not None:
            raise lane.error
    return [lane.result for lane in lanes]  # type: ignore[misc]


def advance(model: DiffusionModel, lanes: Sequence[Lane]) -> None:
    """Start lanes that have not started, then give every pending lane one ε̂ from a shared evaluation.

    A lane's own failure stays in its ``error``; a failure of the shared network call fails
    every lane that took part in it.
    """
    for lane in lanes:
        if lane.live:
            lane.start()
    pending = [lane for lane in lanes if lane.live and lane.request is not None]
    if not pending:
        return
    try:
        eps = evaluate(model, [lane.request for lane in pending])  # type: ignore[misc]
    except Exception as exc:
        for lane in pending:
            lane.error = exc
        return
    for lane, value in zip(pending, eps, strict=True):
        lane.progress = lane.request.progress  # type: ignore[union-attr]
        lane.evaluations += 1
        lane._resume(value)


__all__ = [
    "Conditioning",
    "Job",
    "Lane",
    "Layout",
    "Request",
    "advance",
    "bind",
    "conditioning",
    "drive",
    "drive_together",
    "evaluate",
    "guided_eps",
    "plan",
]
