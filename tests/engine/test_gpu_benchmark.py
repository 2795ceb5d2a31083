"""Smoke tests of the GPU benchmark's code paths (benchmarks/gpu.py) on CPU with the tiny random models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_sdxl_with_determinism_on_and_off(bench, tmp_path):
    """The tiny SDXL pipeline through the engine's SDXL path: every section in both modes, the ratios, and an
    exact round trip that is bit-exact."""
    out = tmp_path / "sdxl.json"
    argv = ["--tiny", "--family", "sdxl", "--determinism", "both", "--steps", "2", "--batch-sizes", "1,2"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["family"] == "stable-diffusion-xl" and report["complete"] and report["skipped"] == []
    assert report["vae_dtype"] == "float32"
    for name in ("unet_floor_ms", "uncached_edit_s", "throughput_jobs_per_s"):
        assert name in report and f"{name}_fast" in report
    assert set(report["throughput_jobs_per_s_fast"]) == {"1", "2"}
    cost = report["exact_mode_cost"]
    assert {"unet_floor_1_row", "unet_floor_2_rows", "uncached_edit", "throughput_b1", "throughput_b2"} <= set(cost)
    assert all(v > 0 for v in cost.values())
    assert list(report["roundtrip"]) == ["bdia fixed point"] and report["roundtrip"]["bdia fixed point"]["bit_exact"]
    assert report["fingerprint"]["deterministic"] == "on"
    assert "| exact-mode cost (time on / off), uncached edit |" in report["markdown"]
    assert out.with_suffix(".md").read_text() == report["markdown"]


def test_determinism_off_restores_nothing_exact(bench):
    """The fast settings turn off exactly what ``configure_determinism`` turns on, and back."""
    import torch

    bench.set_determinism(torch.device("cpu"), False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    bench.set_determinism(torch.device("cpu"), True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_budget_skips_sections_and_still_writes(bench, tmp_path):
    """A budget far below the run's length: sections are skipped or stopped, each recorded, and the JSON is
    written before the budget ends."""
    out = tmp_path / "sd15.json"
    budget = 6.0
    # Many steps and jobs: the run cannot fit the budget however fast the machine (it once did at the defaults).
    argv = ["--tiny", "--determinism", "both", "--steps", "400", "--jobs", "16", "--batch-sizes", "1,4,8"]
    rc = bench.main([*argv, "--budget-s", str(budget), "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc in (0, 1)
    assert report["skipped"] and not report["complete"]
    assert all(s["reason"] for s in report["skipped"])
    assert report["seconds"] < budget
    assert "| skipped: " in report["markdown"]
