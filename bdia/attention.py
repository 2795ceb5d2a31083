"""Prompt-to-Prompt attention control on diffusers' attention processors (docs/editing.md).

``controlled(unet, groups)`` installs ``ControlledProcessor`` on every attention module of a
``UNet2DConditionModel`` for one network call and restores the model's own processors afterwards.
Each group is one edit job's rows in that call (its target's unconditional and conditional rows and
its source row) with the job's ``AttentionControl``. For those rows the processor computes the
attention probabilities explicitly, group by group, so a job's result depends only on its own rows
(and on the call's batch size and its slot, as everywhere: docs/batch-invariance.md):

- cross-attention: the target's conditional probabilities become the source's, mapped through the
  prompt alignment (``bdia.prompts.align``), over the first ``cross`` fraction of the steps; chosen
  target tokens are reweighted;
- self-attention: the target's conditional probabilities become the source's in the layers with at
  most ``self_max_tokens`` queries, over the first ``self_fraction`` of the steps;
- capture: the source's and the target's cross-attention maps of the blend words, and the source's
  of each kept phrase's noun, averaged over heads, summed per layer resolution (what the automatic
  mask is made of: ``attention_map``, ``kept_maps``).

Rows outside every group (padding) get zeros; calls without groups never see this module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class AttentionControl:
    """One edit job's attention settings and what it captured (mutable: one per job)."""

    mapper: Tensor  # [L, L] source token → target token (bdia.prompts.Alignment)
    alphas: Tensor  # [L] 1 = the target token takes the source's attention
    steps: int  # network calls of the target walk
    latent_size: tuple[int, int]
    cross: float = 0.8
    self_fraction: float = 0.0
    self_max_tokens: int = 256
    reweight: dict[int, float] = field(default_factory=dict)  # target token → factor
    source_tokens: list[int] = field(default_factory=list)  # blend tokens read from the source row
    target_tokens: list[int] = field(default_factory=list)  # blend tokens read from the target row
    window: float = 1.0  # the share of the steps that run the source row (injection and capture)
    step: int = 0  # the index of the current call (0 = first)
    keep_groups: list[list[int]] = field(default_factory=list)  # source tokens of each kept phrase's noun
    maps: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (h, w) → [h, w] summed maps
    kept: dict[tuple[int, tuple[int, int]], Tensor] = field(default_factory=dict)  # (group, (h, w)) → summed
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def injecting_cross(self) -> bool:
        return self.step < self.cross * self.steps

    def injecting_self(self, queries: int) -> bool:
        return queries <= self.self_max_tokens and self.step < self.self_fraction * self.steps

    def capturing(self, size: tuple[int, int]) -> bool:
        """Capture at layer resolutions between a quarter and a half of the latent's side."""
        h = self.latent_size[0]
        return bool(self.source_tokens or self.target_tokens) and h / 4 <= size[0] <= max(h / 2, 1)

    def record(self, size: tuple[int, int], source: Tensor, target: Tensor) -> None:
        """Add a layer's maps (probs [heads, Q, L] of the source and target conditional rows)."""
        total = torch.zeros(size, dtype=torch.float32, device=source.device)
        for probs, tokens in ((source, self.source_tokens), (target, self.target_tokens)):
            if tokens:
                total += probs[:, :, tokens].float().sum(-1).mean(0).reshape(size)
        self.maps[size] = self.maps.get(size, 0) + total
        for group, tokens in enumerate(self.keep_groups):
            kept = source[:, :, tokens].float().sum(-1).mean(0).reshape(size)
            self.kept[(group, size)] = self.kept.get((group, size), 0) + kept
        self.counts[size] = self.counts.get(size, 0) + 1

    def clear(self) -> None:
        """Forget what was captured."""
        self.maps.clear()
        self.kept.clear()
        self.counts.clear()

    def attention_map(self) -> Tensor | None:
        """The blend words' captured maps so far at the mask's resolution, upsampled to the latent's size,
        min-max normalised.

        The mask's resolution is the captured layer resolution nearest a quarter of the latent's side (16 × 16
        for SD's 64 × 64 latent, as Prompt-to-Prompt; on the bundled model its maps overlap the edited object
        best: docs/editing.md). Min-max, not max, normalisation: a word's attention has a floor everywhere."""
        size = self._mask_size()
        return None if size is None else self._normalised(self.maps[size], size)

    def kept_maps(self) -> list[Tensor]:
        """Each kept phrase's noun map (``keep_groups``), as ``attention_map``."""
        size = self._mask_size()
        if size is None:
            return []
        return [self._normalised(self.kept[(g, size)], size) for g in range(len(self.keep_groups))]

    def _mask_size(self) -> tuple[int, int] | None:
        h = self.latent_size[0]
        return min(self.maps, key=lambda s: (abs(s[0] - h / 4), s[0])) if self.maps else None

    def _normalised(self, summed: Tensor, size: tuple[int, int]) -> Tensor:
        m = F.interpolate(
            (summed / self.counts[size])[None, None], size=self.latent_size, mode="bilinear", align_corners=False
        )
        return min_max(m)


def min_max(m: Tensor) -> Tensor:
    """``m`` scaled to [0, 1] (a map's floor to 0, its peak to 1)."""
    m = m - m.amin()
    return m / m.amax().clamp_min(1e-12)


@dataclass(frozen=True)
class Group:
    """One job's rows in a call: target (unconditional or None, conditional) and source conditional."""

    control: AttentionControl
    uncond: int | None
    cond: int
    source: int
    extra: tuple[int, ...] = ()  # other rows of the job (a source branch's unconditional row)

    @property
    def rows(self) -> list[int]:
        return [r for r in (self.uncond, self.cond, *self.extra, self.source) if r is not None]


def _spatial(queries: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer with ``queries`` positions, for a latent of ``latent`` (h, w)."""
    h, w = latent
    for _ in range(8):
        if h * w == queries:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    side = math.isqrt(queries)
    return side, queries // max(side, 1)


class ControlledProcessor:
    """``AttnProcessor2_0``'s arithmetic with explicit probabilities for the controlled rows."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = list(groups)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        is_cross = encoder_hidden_states is not None
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch_size)
            mask = mask.view(batch_size, heads, -1, mask.shape[-1])
        out = torch.zeros_like(query)
        for group in self.groups:
            rows = group.rows
            q, k, v = query[rows], key[rows], value[rows]
            scores = (q @ k.transpose(-1, -2)) * attn.scale
            if mask is not None:
                scores = scores + mask[rows]
            probs = scores.float().softmax(-1)
            self._control(group, rows, probs, is_cross, query.shape[2])
            out[rows] = (probs.to(v.dtype) @ v).to(out.dtype)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _control(group: Group, rows: list[int], probs: Tensor, is_cross: bool, queries: int) -> None:
        """Edit the target's conditional probabilities in place (``probs`` is [rows, heads, Q, L])."""
        c = group.control
        cond, source = rows.index(group.cond), rows.index(group.source)
        if is_cross:
            size = _spatial(queries, c.latent_size)
            if c.capturing(size):
                c.record(size, probs[source], probs[cond])
            if c.injecting_cross():
                mapped = probs[source] @ c.mapper.to(probs.device)
                alphas = c.alphas.to(probs.device)
                probs[cond] = mapped * alphas + probs[cond] * (1 - alphas)
            if c.reweight:
                tokens = list(c.reweight)
                factors = torch.tensor([c.reweight[t] for t in tokens], dtype=probs.dtype, device=probs.device)
                probs[cond][..., tokens] = probs[cond][..., tokens] * factors
        elif c.injecting_self(queries):
            probs[cond] = probs[source]


@contextlib.contextmanager
def controlled(unet: torch.nn.Module, groups: Sequence[Group]) -> Iterator[None]:
    """Within the block, every attention module of ``unet`` runs ``ControlledProcessor(groups)``."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor(ControlledProcessor(groups))
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


__all__ = ["AttentionControl", "ControlledProcessor", "Group", "controlled", "min_max"]
