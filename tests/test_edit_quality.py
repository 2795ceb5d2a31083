"""Smoke test of the Shapes-Edit benchmark's code path (benchmarks/edit_quality.py) on a tiny budget."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "edit_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("edit_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def report(bench):
    argv = ["--model", "tiny-random-pixel", "--n", "2", "--steps", "3", "--strength", "1", "--guidance", "2",
            "--samples", "2", "--validate", "3", "--batch", "2"]
    return bench.main(argv, echo=lambda _: None)


def test_table_has_every_method(bench, report):
    assert list(report["methods"]) == list(bench.METHODS)
    for name in bench.METHODS:
        assert f"| {name} |" in report["markdown"]
    assert "edit_quality.py --model tiny-random-pixel --n 2" in report["markdown"]
    assert report["classifier"]["object_accuracy"] == 1.0
    assert 0 <= report["samples"]["prompt_accuracy"] <= 1


def test_exact_reconstruction_is_bit_exact(report):
    exact = report["methods"]["BDIA exact"]
    assert exact["latent_error"] == 0.0
    assert exact["recon_psnr"] == math.inf
    assert report["methods"]["DDIM inversion"]["latent_error"] > 0  # the inexact baseline really is inexact


def test_masked_edit_keeps_the_outside(report):
    masked = report["methods"]["BDIA exact + mask"]
    assert masked["outside_mask_identical"] is True
    assert masked["background_psnr"] == math.inf
    assert masked["nfe"] == report["methods"]["BDIA exact"]["nfe"]
