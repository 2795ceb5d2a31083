"""Shared fixtures: the tiny random model and a small test image."""

from __future__ import annotations

import os

# Tiny models run fastest on one thread, and worker processes started by tests inherit the
# setting, so every process computes with the same numerics fingerprint.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model():
    import bdia

    model = bdia.load_model("tiny-random", device="cpu")
    bdia.configure_determinism(model)  # exact mode's flags, set once as the CLI and the worker do
    return model


@pytest.fixture(scope="session")
def test_image() -> Image.Image:
    """A deterministic 64×48 RGB image with structure at several scales (not the model's size)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    base[10:30, 20:40] = [220, 40, 40]
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")
