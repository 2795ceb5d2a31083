"""A pixel-statistics classifier for shape scenes: which objects an image shows, and where.

No learning. The background is a plane fitted to the border pixels. Each pixel is explained as a
mix of the background and one palette colour (the mixing weight is its coverage), so anti-aliased
edges keep their colour. Objects are the 4-connected regions of covered pixels; an object's colour
is the palette colour that covers most of it, and its kind is the shape whose rendered template,
placed at the object's centroid with the object's area, overlaps it best (soft IoU).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .scenes import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    Edit,
    Scene,
    Shape,
    _unit_outline,
    extent,
    random_scene,
    scene_rng,
)

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_COLOUR_NAMES = list(COLOURS)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_BACKGROUND_PALETTE = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
MIN_AREA = 0.008  # the smallest object, as a fraction of the image (the smallest shape is ~0.03)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points.T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


_UNIT_AREA = {kind: _polygon_area(_unit_outline(kind)) for kind in KINDS}


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image; ``center`` and ``size`` in image-relative units like :class:`Shape`."""

    colour: str
    kind: str
    center: tuple[float, float]
    size: float
    score: float  # soft IoU of the best template
    mask: np.ndarray = field(repr=False, compare=False)  # (H, W) coverage in [0, 1]


@dataclass(frozen=True)
class Detection:
    """What an image shows: its background's name and the objects, left to right."""

    background: str
    objects: tuple[DetectedObject, ...]


def _background(image: np.ndarray) -> np.ndarray:
    """Per-pixel background colour: a plane per channel fitted to the border, robust to objects there."""
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    pixels = image[border]
    design = np.stack([np.ones(border.sum()), xs[border] / w - 0.5, ys[border] / h - 0.5], axis=1)
    keep = np.linalg.norm(pixels - np.median(pixels, axis=0), axis=1) < 40
    if keep.sum() < 8:
        keep[:] = True
    coef, *_ = np.linalg.lstsq(design[keep], pixels[keep], rcond=None)
    full = np.stack([np.ones(h * w), xs.ravel() / w - 0.5, ys.ravel() / h - 0.5], axis=1)
    return (full @ coef).reshape(h, w, 3).astype(np.float32)


def _unmix(image: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, coverage): per pixel the best palette index and, per palette colour, its coverage
    (H, W, n_colours) when the pixel is read as a mix of that colour and the background."""
    diff = image - background  # (H, W, 3)
    axis = _PALETTE[None, None] - background[:, :, None]  # (H, W, C, 3)
    cover = np.einsum("hwk,hwck->hwc", diff, axis) / np.maximum((axis**2).sum(-1), 1.0)
    cover = np.clip(cover, 0.0, 1.0)
    residual = np.linalg.norm(diff[:, :, None] - cover[..., None] * axis, axis=-1)
    return residual.argmin(-1), cover


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a bool mask, as bool masks."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for start in map(tuple, np.argwhere(mask)):
        if seen[start]:
            continue
        comp = np.zeros_like(mask)
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            comp[y, x] = True
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(comp)
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def classify_kind(coverage: np.ndarray) -> tuple[str, float, tuple[float, float], float]:
    """(kind, score, centre, size) of the single object whose (H, W) coverage is given: the kind whose
    template, placed at the centroid with the same area, has the highest soft IoU (the score)."""
    h, w = coverage.shape
    area = float(coverage.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    center = (float((coverage * (xs + 0.5)).sum() / area / w), float((coverage * (ys + 0.5)).sum() / area / h))
    best = ("circle", -1.0, center, 0.0)
    for kind in KINDS:
        size = float(np.sqrt(area / (h * w) / _UNIT_AREA[kind]))
        template = Scene((Shape(kind, "red", center, size),)).masks(w)[0]
        score = _soft_iou(coverage, template)
        if score > best[1]:
            best = (kind, score, center, size)
    return best


def detect(image: np.ndarray | object, min_area: float = MIN_AREA) -> Detection:
    """The background and objects of an (H, W, 3) uint8 image (or a PIL image)."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    h, w, _ = pixels.shape
    background = _background(pixels)
    label, cover = _unmix(pixels, background)
    alpha = np.take_along_axis(cover, label[..., None], axis=-1)[..., 0]
    border_colour = np.median(
        np.concatenate([pixels[[0, -1]].reshape(-1, 3), pixels[:, [0, -1]].reshape(-1, 3)]), axis=0
    )
    bg_name = _BACKGROUND_NAMES[int(np.linalg.norm(_BACKGROUND_PALETTE - border_colour, axis=1).argmin())]
    objects = []
    for comp in _components(alpha >= 0.5):
        votes = np.bincount(label[comp], weights=alpha[comp], minlength=len(_COLOUR_NAMES))
        c = int(votes.argmax())
        coverage = np.where(_grow(comp), cover[..., c], 0.0).astype(np.float32)
        if coverage.sum() < min_area * h * w:
            continue
        kind, score, center, size = classify_kind(coverage)
        objects.append(DetectedObject(_COLOUR_NAMES[c], kind, center, size, score, coverage))
    objects.sort(key=lambda o: o.center)
    return Detection(bg_name, tuple(objects))


def _pairs(found: tuple[DetectedObject, ...], wanted: tuple[Shape, ...], by_position: bool) -> list[tuple]:
    """The pairing of detected objects with wanted shapes: nearest centres if ``by_position``, else the
    one that agrees on most (colour, kind)."""
    n = min(len(found), len(wanted))

    def cost(pairing):
        if by_position:
            return sum((f.center[0] - s.center[0]) ** 2 + (f.center[1] - s.center[1]) ** 2 for f, s in pairing)
        return -sum((f.colour == s.colour) + (f.kind == s.kind) for f, s in pairing)

    options = [
        list(zip(p, q, strict=True))
        for p in itertools.permutations(found, n)
        for q in itertools.combinations(wanted, n)
    ]
    return min(options, key=cost) if options else []


def compare(image: np.ndarray | object, scene: Scene, by_position: bool = True) -> dict:
    """How far ``image`` shows ``scene``: the object count, and per shape of the scene whether an object of
    that colour and kind is there (paired by position, or by content when ``by_position`` is False,
    e.g. for samples whose layout the prompt does not fix)."""
    found = detect(image)
    pairs = _pairs(found.objects, scene.shapes, by_position)
    colours = sum(f.colour == s.colour for f, s in pairs)
    kinds = sum(f.kind == s.kind for f, s in pairs)
    both = sum(f.colour == s.colour and f.kind == s.kind for f, s in pairs)
    count_ok = len(found.objects) == len(scene.shapes)
    return {
        "shapes": len(scene.shapes),
        "found": len(found.objects),
        "count_ok": count_ok,
        "colour_ok": colours,
        "kind_ok": kinds,
        "objects_ok": both,
        "background_ok": found.background == scene.background,
        "ok": count_ok and both == len(scene.shapes),
        "detection": found,
    }


def added_object(image: np.ndarray | object, edit: Edit) -> DetectedObject | None:
    """The object an ``"add"`` edit drew: one with the added shape's colour and kind that is none of the kept
    shapes (its centre is outside each kept shape's extent). Anywhere in the image: captions carry no positions
    (only the left-to-right order), so neither the model nor the edit can know where the generator put it."""
    if edit.kind != "add":
        return None
    _, after = edit.edited_shapes
    kept = edit.kept_shapes
    for o in detect(image).objects:
        new = all(math.dist(o.center, s.center) > extent(s.size) for s in kept)
        if new and o.colour == after.colour and o.kind == after.kind:
            return o
    return None


def edited_object(image: np.ndarray | object, edit: Edit) -> DetectedObject | None:
    """The object ``image`` drew for the edited shape: for ``"add"`` the ``added_object``; for colour and kind
    edits the object nearest the shape's place (within its extent, as ``edit_success`` judges it), whatever its
    size, which captions do not carry; None for remove and background edits, or where there is none."""
    if edit.kind == "add":
        return added_object(image, edit)
    before, after = edit.edited_shapes
    return None if before is None or after is None else nearest_object(detect(image).objects, after)


def nearest_object(objects: Sequence[DetectedObject], shape: Shape) -> DetectedObject | None:
    """The object nearest ``shape``'s centre among those within its extent (None if there is none)."""
    near = [o for o in objects if math.dist(o.center, shape.center) <= extent(shape.size)]
    return min(near, key=lambda o: math.dist(o.center, shape.center)) if near else None


def edit_success(image: np.ndarray | object, edit: Edit) -> bool:
    """Whether ``image`` shows the edit: an object with the target's colour and kind where the edited shape
    is (for ``"remove"``: no object there; for ``"add"``: a new such object anywhere, ``added_object``)."""
    if edit.kind == "add":
        return added_object(image, edit) is not None
    before, after = edit.edited_shapes
    found = nearest_object(detect(image).objects, after or before)
    if after is None:
        return found is None
    return found is not None and found.colour == after.colour and found.kind == after.kind


def validate(n: int = 500, seed: int = 0, resolution: int = 32, stream: int = 7) -> dict:
    """Accuracy of :func:`detect` on ``n`` ground-truth renders of random scenes.

    ``object_accuracy``: shapes whose colour and kind are both recognised; ``scene_accuracy``: scenes
    with the right object count and every object right; ``background_accuracy``: background names.
    """
    totals = dict.fromkeys(("shapes", "colour_ok", "kind_ok", "objects_ok", "count_ok", "background_ok", "ok"), 0)
    confusion: dict[tuple[str, str], int] = {}
    for i in range(n):
        scene = random_scene(scene_rng(seed, i, stream))
        result = compare(scene.render(resolution), scene)
        for key in totals:
            totals[key] += int(result[key])
        for f, s in _pairs(result["detection"].objects, scene.shapes, True):
            if f.kind != s.kind:
                confusion[(s.kind, f.kind)] = confusion.get((s.kind, f.kind), 0) + 1
    shapes = max(totals["shapes"], 1)
    return {
        "scenes": n,
        "shapes": totals["shapes"],
        "resolution": resolution,
        "colour_accuracy": totals["colour_ok"] / shapes,
        "kind_accuracy": totals["kind_ok"] / shapes,
        "object_accuracy": totals["objects_ok"] / shapes,
        "count_accuracy": totals["count_ok"] / n,
        "background_accuracy": totals["background_ok"] / n,
        "scene_accuracy": totals["ok"] / n,
        "kind_confusions": {f"{a}->{b}": c for (a, b), c in sorted(confusion.items())},
    }
