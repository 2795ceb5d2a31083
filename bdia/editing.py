"""Controlled edits: an exact source branch, a target branch, attention control and an automatic mask.

See docs/editing.md. The source branch of an edit of a BDIA inversion is the inversion's own
trajectory (the lattice states of levels 0…K, stored, exact, free); one network row per step under
the source prompt runs on it only to give the target its attention (``bdia.attention``). The target
branch regenerates from the inverted pair under the edit prompt with its own γ and guidance. After
every step the target's state is kept equal to the source's outside the edit mask, so outside the
final mask the result is the source, bit for bit. The mask comes from the cross-attention maps of
the changed phrases' nouns (an edit whose phrases cover most of the image, such as a background, is
global and not blended), or from the difference of the two branches' noise predictions (DiffEdit).
A phrase the edit deletes restarts from fresh noise where it was (``Removal``): its inverted state
would draw it again.

A DDIM inversion has no stored trajectory: its source branch is a DDIM regeneration under the source
prompt beside the target (Prompt-to-Prompt on DDIM inversion, the inexact baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import AttentionControl, min_max
from .errors import InvalidParameter
from .grid import LevelGrid
from .params import EditParams, InversionParams, check_gamma
from .prompts import align, blend_words, find_words, kept_nouns, tokens_of
from .sampling import FixedPoint, FloatLattice, Lattice, Walk, bdia_sample, ddim_sample, lattice_for

Tensor = torch.Tensor

#: The edit γ of a controlled BDIA edit when the request names none (measured: docs/benchmarks.md).
CONTROLLED_GAMMA = 0.5
#: Calls whose noise difference makes the DiffEdit mask (its first steps, as DiffEdit's early timesteps).
NOISE_CALLS = 0.3
#: An attention mask covering more than this share of the image makes the edit global: no blending.
LOCALISED = 0.5
#: The least share of the steps that runs the source row when a mask is made from it (its capture window).
MASK_WINDOW = 0.5


def target_lattice(
    params: InversionParams, gamma: float, hi: Tensor, lo: Tensor, trajectory: Tensor | list[Tensor] | None
) -> tuple[Lattice, Tensor, Tensor, Tensor | list[Tensor] | None]:
    """The lattice a regeneration with BDIA γ ``gamma`` runs on, and the pair and trajectory on it.

    γ < 1 cannot stay on the integer lattice: a fixed-point inversion is then decoded to float64 (exactly).
    """
    lattice = lattice_for(params.state)
    if gamma != params.gamma:
        if params.method != "bdia":
            raise InvalidParameter("a regeneration's own gamma applies to BDIA inversions only")
        check_gamma(gamma, params.levels, inverting=False)
        if isinstance(lattice, FixedPoint):
            decode, lattice = lattice.decode, FloatLattice(torch.float64)
            hi, lo = decode(hi), decode(lo)
            trajectory = None if trajectory is None else [decode(t) for t in trajectory]
    return lattice, hi, lo, trajectory


def otsu_threshold(values: Tensor, bins: int = 64) -> float:
    """The level in [0, 1] that best splits ``values`` (in [0, 1]) into two classes (Otsu's method)."""
    hist = torch.histc(values.detach().float().cpu().flatten(), bins=bins, min=0.0, max=1.0)
    p = hist / hist.sum().clamp_min(1)
    below = p.cumsum(0)[:-1]  # the share at or below each inner bin edge
    mean_below = (p * (torch.arange(bins) + 0.5) / bins).cumsum(0)[:-1]
    total = mean_below[-1] + p[-1] * (bins - 0.5) / bins
    between = (total * below - mean_below) ** 2 / (below * (1 - below)).clamp_min(1e-12)
    return float(int(torch.argmax(between)) + 1) / bins


def dilate(mask: Tensor, pixels: int = 1) -> Tensor:
    """Grow a boolean [1, 1, h, w] mask by ``pixels`` (a max-pool)."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    return F.max_pool2d(mask.float(), k, stride=1, padding=pixels) > 0


def attention_mask(m: Tensor, threshold: float | None) -> Tensor:
    """The mask of a min-max normalised attention map ``m``: above ``threshold`` (None: Otsu's), dilated by one."""
    return dilate(m > (otsu_threshold(m) if threshold is None else threshold))


def localised(mask: Tensor) -> bool:
    """Whether ``mask`` is a local region (at most ``LOCALISED`` of the image), not the scene itself."""
    return float(mask.float().mean()) <= LOCALISED


def without_kept(mask: Tensor, m: Tensor, control: AttentionControl, threshold: float | None) -> Tensor:
    """The edit mask ``mask`` (of the blend words' map ``m``) less the objects the edit keeps.

    A kept object is its noun's map above Otsu's level, where that is local. An edit that draws a new object
    (blend words read from the target row) must not draw it over a kept one: the kept objects, dilated by one,
    leave whole, and the mask is made again from ``m`` over the rest (the new noun's attention sits on the
    existing objects at first: docs/editing.md). An edit of existing objects loses the pixels a kept noun's map
    holds more than ``m``."""
    kept = [(k, k > otsu_threshold(k)) for k in control.kept_maps()]
    kept = [(k, region) for k, region in kept if localised(region)]
    if not kept:
        return mask
    if not control.target_tokens:
        for k, _ in kept:
            mask = mask & ~(k > m)
        return mask
    objects = dilate(torch.stack([region for _, region in kept]).any(0))
    return attention_mask(min_max(torch.where(objects, torch.zeros_like(m), m)), threshold) & ~objects


@dataclass
class Blender:
    """Chooses the edit mask after every step and keeps the target on the source outside it."""

    control: AttentionControl | None
    mode: str  # auto, attention, noise, none, or fixed (a given mask)
    threshold: float | None  # of the attention map; None: Otsu's
    source_state: Callable[[int], Tensor]
    fixed: Tensor | None = None
    noise_calls: int = 1
    noise: Tensor | None = None
    seen: int = 0
    mask: Tensor | None = None  # the mask of the latest blend
    source: str = field(default="none")  # what the latest mask came from

    def observe(self, eps: Tensor) -> None:
        """Accumulate |ε_target − ε_source| (the conditional rows) over the first calls."""
        self.seen += 1
        if self.mode in ("auto", "noise") and self.seen <= self.noise_calls:
            diff = (eps[2:3] - eps[3:4]).abs().mean(1, keepdim=True).float()
            self.noise = diff if self.noise is None else self.noise + diff

    def current(self) -> Tensor | None:
        if self.mode == "fixed":
            self.source = "given"
            return self.fixed
        if self.mode == "none":
            return None
        if self.mode in ("auto", "attention") and self.control is not None:
            m = self.control.attention_map()
            if m is not None:
                mask = attention_mask(m, self.threshold)
                local = localised(mask)  # decided before the kept objects are cut out: a background stays global
                mask = without_kept(mask, m, self.control, self.threshold)
                if self.mode == "attention" or local:
                    self.source = "attention"
                    return mask
                self.source = "global"  # the changed phrases cover most of the image (a background, a style)
                return None
        if self.noise is not None:
            n = F.avg_pool2d(self.noise, 3, stride=1, padding=1, count_include_pad=False)
            self.source = "noise"
            return dilate(n / n.amax().clamp_min(1e-12) > 0.5)
        return None

    def guide(self, level: int, state: Tensor) -> Tensor:
        """``state`` at ``level`` kept on the source outside the current mask (``mask``: the one it used, or None)."""
        mask = self.current()
        self.mask = None if mask is None else mask.to(state.device)
        if self.mask is None:
            return state
        return torch.where(self.mask, state, self.source_state(level).to(state.device).reshape(state.shape))


class TrajectorySource:
    """The exact source branch: the inversion's stored lattice states."""

    def __init__(self, trajectory: Tensor | list[Tensor], decode: Callable[[Tensor], Tensor]) -> None:
        self.trajectory, self.decode = trajectory, decode

    def network_state(self, level: int) -> Tensor:
        return self.decode(self.trajectory[level])

    def state(self, level: int) -> Tensor:
        return self.trajectory[level]

    def advance(self, eps: Tensor) -> None:
        pass


class WalkSource:
    """A regenerated source branch (DDIM inversions): a walk under the source prompt, beside the target."""

    def __init__(self, walk: Walk[Tensor]) -> None:
        self.walk = walk
        self.z, self.level = next(walk)
        self.states = {self.level: self.z}

    def network_state(self, level: int) -> Tensor:
        return self.z

    def state(self, level: int) -> Tensor:
        return self.states[level]

    def advance(self, eps: Tensor) -> None:
        try:
            self.z, self.level = self.walk.send(eps)
        except StopIteration as done:
            self.z, self.level = done.value, 0
        self.states[self.level] = self.z


@dataclass
class Removal:
    """Phrases the edit deletes restart from noise where they were: their inverted state still draws them
    (measured: docs/editing.md). One probe call on the inverted state finds the region from the deleted nouns'
    attention; ``restart`` then gives the target walk from the pair re-noised inside it."""

    tokens: list[int]  # the deleted nouns' source tokens
    restart: Callable[[Tensor], Walk[Tensor]]
    threshold: float | None = None
    region: Tensor | None = None  # where the target restarted from noise, if it did

    def probe(self, control: AttentionControl) -> Tensor | None:
        """The region of the maps ``control`` captured in the probe call (None if they do not localise)."""
        m = control.attention_map()
        region = None if m is None else attention_mask(m, self.threshold)
        return region if region is not None and localised(region) else None


def controlled_walk(
    target: Walk[Tensor],
    source: TrajectorySource | WalkSource,
    control: AttentionControl,
    blender: Blender,
    removal: Removal | None = None,
) -> Walk[Tensor]:
    """The target walk with the source row beside it: yields [target z, source z], receives
    [ε̂ target, ε̂ source, raw target cond, raw source cond] (``bdia.batching``), returns the target's z0.

    An exact source branch is needed only within the control's ``window`` (injection and the mask's
    capture); after it the walk yields the target's row alone and receives its ε̂ (the mask is settled).
    A regenerated source branch runs to the end. With a ``removal`` the first call is its probe: the
    target's rows are discarded, and the target restarts from the re-noised pair."""
    request = next(target)
    if removal is not None:
        z, level = request
        kept = control.source_tokens, control.target_tokens, control.cross, control.self_fraction
        control.source_tokens, control.target_tokens, control.cross, control.self_fraction = removal.tokens, [], 0, 0
        yield torch.cat([z, source.network_state(level).to(z).reshape(z.shape)]), level
        region = removal.probe(control)
        control.source_tokens, control.target_tokens, control.cross, control.self_fraction = kept
        control.clear()
        if region is not None:
            removal.region = region
            target = removal.restart(region)
            request = next(target)
    try:
        while True:
            z, level = request
            if isinstance(source, WalkSource) or control.step < control.window * control.steps:
                out = yield torch.cat([z, source.network_state(level).to(z).reshape(z.shape)]), level
                blender.observe(out)
                source.advance(out[1:2])
                out = out[:1]
            else:  # past the window: the mask is settled, the target runs alone
                out = yield z, level
            control.step += 1
            request = target.send(out)
    except StopIteration as done:
        return done.value


def fresh_state(grid: LevelGrid, level: int, prior: Tensor, noise: Tensor) -> Tensor:
    """A DDIM state at ``level`` whose clean latent is ``prior``: α·prior + σ·noise."""
    return grid.alpha(level) * prior + grid.sigma(level) * noise


@dataclass
class EditPlan:
    """What ``edit_walk`` needs besides the states: the control, the blender and the source conditioning."""

    control: AttentionControl
    blender: Blender
    walk: Walk[Tensor]
    source_rows: str  # "cond" or "guided": which source rows the network computes
    gamma: float  # the target's BDIA γ
    removal: Removal | None = None

    @property
    def extra_calls(self) -> int:
        """Network calls beyond the plain regeneration's (the removal's probe)."""
        return 0 if self.removal is None else 1


def _words_tokens(tokenizer, alignment, chosen: list[str], *, target_only: bool = False) -> tuple[list[int], list[int]]:
    """Token positions (source, target) of the words ``chosen`` names, in either prompt."""
    src, tgt = [], []
    for word in chosen:
        s = [] if target_only else find_words(alignment.source_words, word)
        t = find_words(alignment.target_words, word)
        if not s and not t:
            where = "the edit prompt" if target_only else "the source or the edit prompt"
            raise InvalidParameter(f"the word {word!r} is not in {where}")
        src += tokens_of(alignment.source_spans, s)
        tgt += tokens_of(alignment.target_spans, t)
    return sorted(set(src)), sorted(set(tgt))


def edit_walk(
    tokenizer,
    grid: LevelGrid,
    params: InversionParams,
    edit: EditParams,
    source_prompt: str,
    target_prompt: str,
    hi: Tensor,
    lo: Tensor,
    trajectory: Tensor | list[Tensor] | None,
    latent_size: tuple[int, int],
    *,
    gamma: float,
    z0: Tensor,
    mask: Tensor | None = None,
) -> EditPlan:
    """The controlled edit of an inversion's pair (``hi``, ``lo``), whose clean latent is ``z0``, from
    ``source_prompt`` to ``target_prompt``."""
    levels = params.levels
    alignment = align(tokenizer, source_prompt, target_prompt)
    if edit.blend_words:
        source_tokens, target_tokens = _words_tokens(tokenizer, alignment, list(edit.blend_words))
    else:
        source_tokens = tokens_of(alignment.source_spans, blend_words(alignment.source_words, alignment.source_changed))
        target_tokens = tokens_of(alignment.target_spans, blend_words(alignment.target_words, alignment.target_changed))
        # A word with a source counterpart points where its counterpart did: only new words read the target row.
        target_tokens = [t for t in target_tokens if float(alignment.alphas[t]) == 0]
    reweight: dict[int, float] = {}
    for word, factor in (edit.reweight or {}).items():
        for t in _words_tokens(tokenizer, alignment, [word], target_only=True)[1]:
            reweight[t] = float(factor)
    control_mode = edit.control
    steps = levels - 1 if params.method == "bdia" else levels
    alphas = alignment.alphas
    if control_mode == "swap":
        # The swapped words and the kept phrases' nouns take their source counterparts' attention: a kept noun
        # then points at its own object, so a region the edit regenerates does not draw that object again.
        swapped = torch.zeros_like(alphas)
        kept_targets = kept_nouns(alignment.target_words, alignment.target_changed)
        swapped[tokens_of(alignment.target_spans, alignment.target_changed + kept_targets)] = 1.0
        alphas = alphas * swapped
    control = AttentionControl(
        mapper=alignment.mapper,
        alphas=alphas,
        steps=max(steps, 1),
        latent_size=latent_size,
        cross=edit.cross_fraction if control_mode != "none" else 0.0,
        self_fraction=edit.self_fraction if control_mode == "cross+self" else 0.0,
        reweight=reweight,
        source_tokens=source_tokens,
        target_tokens=target_tokens,
    )
    mode = "fixed" if mask is not None else edit.mask_mode
    if edit.keep_unchanged and mode in ("auto", "attention"):
        kept = kept_nouns(alignment.source_words, alignment.source_changed)
        control.keep_groups = [tokens_of(alignment.source_spans, [n]) for n in kept]
    capture = mode in ("auto", "attention", "noise")
    control.window = max(control.cross, control.self_fraction, MASK_WINDOW if capture else 0.0)
    if mode == "noise":
        control.source_tokens, control.target_tokens = [], []
    if params.method == "bdia":
        lattice, hi, lo, trajectory = target_lattice(params, gamma, hi, lo, trajectory)
        if trajectory is None:
            raise InvalidParameter("a controlled edit needs an inversion that kept its trajectory")
        source: TrajectorySource | WalkSource = TrajectorySource(trajectory, lattice.decode)
        rows = "cond"
    elif params.method == "ddim":
        source = WalkSource(ddim_sample(grid, hi.clone(), start=levels))
        rows = "guided"
    else:
        raise InvalidParameter("controlled edits need a BDIA or DDIM inversion (use control none for EDICT)")
    blender = Blender(
        control, mode, edit.mask_threshold, source.state, fixed=mask, noise_calls=max(1, round(NOISE_CALLS * steps))
    )

    def target_walk(hi: Tensor, lo: Tensor | None) -> Walk[Tensor]:
        if params.method == "bdia":
            return _decoded(
                bdia_sample(grid, hi, lo, start=levels, gamma=gamma, lattice=lattice, guide=blender.guide), lattice
            )
        return ddim_sample(grid, hi, start=levels, guide=blender.guide)

    removal = None
    deleted = tokens_of(alignment.source_spans, blend_words(alignment.source_words, alignment.source_deleted))
    if deleted and edit.restart_removed and mode in ("auto", "attention"):
        encode = lattice.encode if params.method == "bdia" else (lambda z: z.to(hi.dtype))

        def restart(region: Tensor) -> Walk[Tensor]:
            """The target walk from the inverted pair with fresh noise states inside ``region``, whose clean
            latent is the mean of ``z0`` outside it (what surrounds the deleted object); the noise is seeded."""
            outside = (~region).to(z0.device).expand_as(z0).double()
            prior = (z0.double() * outside).sum((-2, -1), keepdim=True) / outside.sum((-2, -1), keepdim=True)
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            noise = noise.to(z0.device)

            def swap(level: int, state: Tensor) -> Tensor:
                fresh = encode(fresh_state(grid, level, prior, noise).to(state.device))
                return torch.where(region.to(state.device), fresh.to(state.dtype), state)

            return target_walk(swap(levels, hi), None if lo is None else swap(levels - 1, lo))

        removal = Removal(deleted, restart, edit.mask_threshold)
    walk = controlled_walk(target_walk(hi, lo if params.method == "bdia" else None), source, control, blender, removal)
    return EditPlan(control, blender, walk, rows, gamma, removal)


def _decoded(walk, lattice: Lattice) -> Walk[Tensor]:
    pair = yield from walk
    return lattice.decode(pair.lo)


__all__ = [
    "CONTROLLED_GAMMA",
    "Blender",
    "EditPlan",
    "Removal",
    "attention_mask",
    "controlled_walk",
    "dilate",
    "edit_walk",
    "fresh_state",
    "otsu_threshold",
    "target_lattice",
    "without_kept",
]
