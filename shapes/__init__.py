"""Shapes: a procedural scene dataset, a pixel-statistics classifier and a small text-to-image model.

``scenes`` draws captioned scenes of coloured shapes and single-attribute edits of them;
``classifier`` recognises the objects of an image; ``train`` trains the default ``shapes`` model.
"""

from .classifier import (
    DetectedObject,
    Detection,
    added_object,
    compare,
    detect,
    edit_success,
    edited_object,
    nearest_object,
    validate,
)
from .scenes import (
    BACKGROUNDS,
    COLOURS,
    EDIT_KINDS,
    GLOBAL_EDIT_KINDS,
    KINDS,
    Edit,
    Scene,
    Shape,
    edit_benchmark,
    edit_scene,
    random_scene,
    scene_rng,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "EDIT_KINDS",
    "GLOBAL_EDIT_KINDS",
    "KINDS",
    "DetectedObject",
    "Detection",
    "Edit",
    "Scene",
    "Shape",
    "added_object",
    "compare",
    "detect",
    "edit_benchmark",
    "edit_scene",
    "edit_success",
    "edited_object",
    "nearest_object",
    "random_scene",
    "scene_rng",
    "validate",
]
