"""Procedural scenes of one or two coloured shapes, their captions and single-attribute edits.

A :class:`Scene` is a small value: a background and up to two :class:`Shape`\\ s, each with a
kind, a colour, a centre and a size in image-relative units (the image is the unit square,
x to the right, y down). It renders at any resolution by drawing with PIL at a supersampled
resolution and box-filtering down, so edges are cleanly anti-aliased. Everything random is
drawn from a ``numpy.random.Generator``, so scenes are deterministic from a seed.

Shapes never overlap and never leave the image, whatever their kind: placement reserves the
room of the largest kind (``extent``), so an edit that changes a kind keeps every position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (245, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (240, 240, 240),
    "black": (24, 24, 24),
    "beige": (222, 204, 170),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
_COLOUR_NAMES, _BACKGROUND_NAMES = tuple(COLOURS), tuple(BACKGROUNDS)
EDIT_KINDS: tuple[str, ...] = ("colour", "kind", "add", "remove")
"""Local edits: one shape changes, appears or disappears."""
GLOBAL_EDIT_KINDS: tuple[str, ...] = ("background",)
"""Global edits: the background's colour changes around every shape."""

SIZE_RANGE = (0.13, 0.2)  # nominal radius, as a fraction of the image side
MAX_SHAPES = 2
GAP = 0.05  # least free space between two shapes
MARGIN = 0.03  # least free space between a shape and the image border
TEXTURE_AMPLITUDE = 14.0  # the largest background gradient, in 8-bit levels from edge to centre
SUPERSAMPLE = 4

# Each kind's outline for a unit nominal radius; sizes are chosen so the kinds look about as large.
_CIRCLE_R = 1.0
_SQUARE_HALF = 0.85
_TRIANGLE_R = 1.2
_STAR_R, _STAR_INNER = 1.2, 0.5


@cache
def _unit_outline(kind: str) -> np.ndarray:
    """The polygon of ``kind`` centred on the origin with nominal radius 1, as (n, 2) points."""
    if kind == "circle":
        a = np.linspace(0.0, 2 * math.pi, 96, endpoint=False)
        return _CIRCLE_R * np.stack([np.cos(a), np.sin(a)], axis=1)
    if kind == "square":
        h = _SQUARE_HALF
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if kind == "triangle":  # equilateral, apex up
        a = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return _TRIANGLE_R * np.stack([np.cos(a), np.sin(a)], axis=1)
    if kind == "star":  # five points, one up
        a = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, _STAR_R, _STAR_R * _STAR_INNER)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    raise ValueError(f"unknown shape kind {kind!r} (one of {KINDS})")


_EXTENT = max(float(np.hypot(*_unit_outline(k).T).max()) for k in KINDS)


def extent(size: float) -> float:
    """The radius a shape of nominal ``size`` may reach, whatever its kind."""
    return size * _EXTENT


@dataclass(frozen=True)
class Shape:
    """One filled shape: ``kind`` in :data:`KINDS`, ``colour`` in :data:`COLOURS`, centre and size in
    image-relative units."""

    kind: str
    colour: str
    center: tuple[float, float]
    size: float

    def outline(self, pixels: float, offset: tuple[int, int] = (0, 0)) -> list[float]:
        """The polygon in pixel coordinates of an image ``pixels`` wide (pixel i spans [i, i+1)) whose corner
        is at ``offset``, flat: x0, y0, x1, y1, …"""
        points = (_unit_outline(self.kind) * self.size + np.asarray(self.center)) * pixels + np.asarray(offset)
        return points.ravel().tolist()

    @property
    def phrase(self) -> str:
        """E.g. ``"a red circle"``, ``"an orange star"``."""
        return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A background (a name in :data:`BACKGROUNDS` plus a faint linear gradient) and its shapes,
    listed left to right."""

    shapes: tuple[Shape, ...]
    background: str = "grey"
    texture: tuple[float, float] = (0.0, 0.0)  # gradient (x, y) in 8-bit levels from centre to edge

    @property
    def caption(self) -> str:
        """E.g. ``"a red circle and a blue square on a grey background"``."""
        return f"{' and '.join(s.phrase for s in self.shapes)} on a {self.background} background"

    def with_shapes(self, shapes: list[Shape] | tuple[Shape, ...]) -> Scene:
        """The same background with ``shapes`` (re-sorted left to right)."""
        return replace(self, shapes=tuple(sorted(shapes, key=lambda s: s.center)))

    def render(self, resolution: int = 32, supersample: int = SUPERSAMPLE) -> np.ndarray:
        """The image as an (H, W, 3) uint8 array."""
        return render_batch((self,), resolution, supersample)[0]

    def image(self, resolution: int = 32) -> Image.Image:
        """The image as a PIL RGB image."""
        return Image.fromarray(self.render(resolution))

    def masks(self, resolution: int = 32, supersample: int = SUPERSAMPLE) -> np.ndarray:
        """Per-shape coverage in [0, 1], an (n_shapes, H, W) float32 array."""
        out = np.zeros((len(self.shapes), resolution, resolution), dtype=np.float32)
        for i, shape in enumerate(self.shapes):
            out[i] = _coverage((shape,), resolution, supersample)
        return out


def _coverage(shapes: tuple[Shape, ...], resolution: int, supersample: int) -> np.ndarray:
    """The fraction of each pixel that ``shapes`` cover, an (H, W) float32 array."""
    side = resolution * supersample
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        draw.polygon(shape.outline(side), fill=255)
    return np.asarray(canvas.reduce(supersample) if supersample > 1 else canvas, dtype=np.float32) / 255.0


def render_batch(scenes: Sequence[Scene], resolution: int = 32, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The images of ``scenes``, an (N, H, W, 3) uint8 array.

    Scenes are drawn as tiles of one supersampled canvas, then box-filtered down (tiles align with the
    filter, and shapes keep clear of the tile edges, so each image is exactly its own); a textured
    background adds its gradient where shapes leave it uncovered.
    """
    n, side = len(scenes), resolution * supersample
    cols = max(1, min(n, 4096 // side))
    rows = -(-n // cols)
    colour = Image.new("RGB", (cols * side, rows * side), None)  # not initialised: every tile is filled below
    cover = Image.new("L", colour.size, None)
    draw_colour, draw_cover = ImageDraw.Draw(colour), ImageDraw.Draw(cover)
    textured = np.array([any(scene.texture) for scene in scenes])
    for i, scene in enumerate(scenes):
        x0, y0 = i % cols * side, i // cols * side
        draw_colour.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=BACKGROUNDS[scene.background])
        if textured[i]:
            draw_cover.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=0)
        for shape in scene.shapes:
            outline = shape.outline(side, (x0, y0))
            draw_colour.polygon(outline, fill=COLOURS[shape.colour])
            if textured[i]:
                draw_cover.polygon(outline, fill=255)

    def tiles(canvas: Image.Image) -> np.ndarray:
        small = np.asarray(canvas.reduce(supersample) if supersample > 1 else canvas)
        small = small.reshape(rows, resolution, cols, resolution, -1).swapaxes(1, 2)
        return small.reshape(rows * cols, resolution, resolution, -1)[:n]

    images = tiles(colour)
    if not textured.any():
        return images
    ramp = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1
    gradient = np.array([scene.texture for scene in scenes], dtype=np.float32)[textured]
    shade = gradient[:, 0, None, None] * ramp[None, None, :] + gradient[:, 1, None, None] * ramp[None, :, None]
    shade *= 1 - tiles(cover)[textured, ..., 0].astype(np.float32) / 255.0
    images = images.copy()
    images[textured] = np.clip(images[textured] + shade[..., None] + 0.5, 0, 255).astype(np.uint8)
    return images


def _place(
    rng: np.random.Generator, size: float, others: list[Shape] | tuple[Shape, ...], tries: int = 64
) -> tuple[float, float] | None:
    """A free centre for a shape of ``size`` beside ``others`` (the first of ``tries`` uniform draws
    that fits), or None."""
    lo, hi = MARGIN + extent(size), 1 - MARGIN - extent(size)
    if lo > hi:
        return None
    candidates = rng.uniform(lo, hi, size=(tries, 2))
    free = np.ones(tries, dtype=bool)
    for o in others:
        free &= np.hypot(*(candidates - o.center).T) >= extent(size) + extent(o.size) + GAP
    hits = np.flatnonzero(free)
    return None if hits.size == 0 else (float(candidates[hits[0], 0]), float(candidates[hits[0], 1]))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def random_shape(rng: np.random.Generator, others: list[Shape] | tuple[Shape, ...] = ()) -> Shape | None:
    """A random shape that fits beside ``others`` (None if none was found)."""
    kind, colour = _pick(rng, KINDS), _pick(rng, _COLOUR_NAMES)
    for _ in range(8):
        size = float(rng.uniform(*SIZE_RANGE))
        center = _place(rng, size, others)
        if center is not None:
            return Shape(kind, colour, center, size)
    return None


def random_scene(rng: np.random.Generator, n_shapes: int | None = None, texture_p: float = 0.5) -> Scene:
    """A random scene with ``n_shapes`` (default: 1 or 2 at random) shapes.

    The background is lightly textured (a faint gradient) with probability ``texture_p``.
    """
    n = int(rng.integers(1, MAX_SHAPES + 1)) if n_shapes is None else n_shapes
    if not 1 <= n <= MAX_SHAPES:
        raise ValueError(f"a scene has 1 to {MAX_SHAPES} shapes, not {n}")
    background = _pick(rng, _BACKGROUND_NAMES)
    texture = (0.0, 0.0)
    if rng.random() < texture_p:
        angle, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0) * TEXTURE_AMPLITUDE
        texture = (round(amp * math.cos(angle), 3), round(amp * math.sin(angle), 3))
    while True:
        shapes: list[Shape] = []
        while len(shapes) < n and (shape := random_shape(rng, shapes)) is not None:
            shapes.append(shape)
        if len(shapes) == n:
            return Scene((), background, texture).with_shapes(shapes)


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of item ``index`` of a seeded stream (training uses stream 0, benchmarks others)."""
    return np.random.default_rng([stream, seed, index])


# --------------------------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """A source scene and a target that differs in exactly one attribute.

    ``kind`` is one of :data:`EDIT_KINDS` or :data:`GLOBAL_EDIT_KINDS`; ``index`` is the edited shape's
    position in ``source.shapes`` (for ``"add"``: the new shape's position in ``target.shapes``; for
    ``"background"``: -1).
    """

    source: Scene
    target: Scene
    kind: str
    index: int

    @property
    def source_prompt(self) -> str:
        return self.source.caption

    @property
    def prompt(self) -> str:
        """The edit prompt: the target scene's caption."""
        return self.target.caption

    @property
    def edited_shapes(self) -> tuple[Shape | None, Shape | None]:
        """(the shape before, the shape after); None where it is absent (both for a background edit)."""
        if self.kind == "background":
            return None, None
        if self.kind == "add":
            return None, self.target.shapes[self.index]
        if self.kind == "remove":
            return self.source.shapes[self.index], None
        before = self.source.shapes[self.index]
        after = next(s for s in self.target.shapes if s.center == before.center)
        return before, after

    @property
    def kept_shapes(self) -> tuple[Shape, ...]:
        """The shapes the edit leaves as they are."""
        before, _ = self.edited_shapes
        return tuple(s for s in self.source.shapes if s is not before)

    def region(self, resolution: int = 32, dilate: int = 1) -> np.ndarray:
        """Where the edit may change pixels: the union of the edited shape before and after, grown by
        ``dilate`` pixels; an (H, W) bool array."""
        region = np.zeros((resolution, resolution), dtype=bool)
        if self.kind == "background":  # every pixel the shapes do not fully cover
            region = ~(self.source.masks(resolution).sum(0) >= 1)
        for shape in self.edited_shapes:
            if shape is not None:
                region |= Scene((shape,)).masks(resolution)[0] > 0
        return grow(region, dilate)


def grow(region: np.ndarray, pixels: int) -> np.ndarray:
    """A boolean (H, W) ``region`` grown by ``pixels`` 4-connected steps."""
    for _ in range(pixels):
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        region = grown
    return region


def possible_edits(scene: Scene) -> tuple[str, ...]:
    """The edit kinds that apply to ``scene`` (``"add"`` needs room; ``"remove"`` needs two shapes)."""
    n = len(scene.shapes)
    return tuple(k for k in EDIT_KINDS if (k != "add" or n < MAX_SHAPES) and (k != "remove" or n > 1))


def edit_scene(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Edit | None:
    """An edit of one attribute of ``scene``: the colour or kind of one shape, one shape added, or one
    removed. Other shapes keep their exact positions. None when ``kind`` does not apply (or, for
    ``"add"``, no free place was found)."""
    allowed = possible_edits(scene)
    kind = _pick(rng, allowed) if kind is None else kind
    if kind == "background":
        colour = _pick(rng, [b for b in _BACKGROUND_NAMES if b != scene.background])
        return Edit(scene, replace(scene, background=colour), kind, -1)
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r} (one of {EDIT_KINDS + GLOBAL_EDIT_KINDS})")
    if kind not in allowed:
        return None
    shapes = list(scene.shapes)
    if kind == "add":
        new = random_shape(rng, shapes)
        if new is None:
            return None
        target = scene.with_shapes([*shapes, new])
        return Edit(scene, target, kind, target.shapes.index(new))
    index = int(rng.integers(len(shapes)))
    old = shapes[index]
    if kind == "remove":
        del shapes[index]
    elif kind == "colour":
        shapes[index] = replace(old, colour=_pick(rng, [c for c in COLOURS if c != old.colour]))
    else:
        shapes[index] = replace(old, kind=_pick(rng, [k for k in KINDS if k != old.kind]))
    return Edit(scene, scene.with_shapes(shapes), kind, index)


def edit_benchmark(n: int, seed: int = 0, stream: int = 1, kinds: Sequence[str] = EDIT_KINDS) -> list[Edit]:
    """``n`` held-out (scene, edit) pairs, the edit ``kinds`` in turn; deterministic from ``seed``.

    Drawn from a stream other than training's, so the scenes are new to a trained model.
    """
    edits: list[Edit] = []
    index = 0
    while len(edits) < n:
        kind = kinds[len(edits) % len(kinds)]
        rng = scene_rng(seed, index, stream)
        index += 1
        n_shapes = 1 if kind == "add" else 2 if kind == "remove" else None
        edit = edit_scene(random_scene(rng, n_shapes), rng, kind)
        if edit is not None:
            edits.append(edit)
    return edits
