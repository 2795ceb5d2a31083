"""Smoke test of the Shapes-Edit benchmark's code path (benchmarks/edit_quality.py) on a tiny budget."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

import bdia
from bdia import imaging
from bdia.batching import Layout
from bdia.ops import invert_latent, regenerate
from shapes import edit_benchmark

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "edit_quality.py"
MODEL = "tiny-random-pixel"


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
    argv = [
        "--model",
        MODEL,
        "--n",
        "2",
        "--steps",
        "3",
        "--strength",
        "1",
        "--guidance",
        "2",
        "--samples",
        "2",
        "--validate",
        "3",
        "--batch",
        "2",
        "--cost",
        "1",
    ]
    return bench.main(argv, echo=lambda _: None)


def test_table_has_every_method(bench, report):
    assert list(report["methods"]) == list(bench.METHODS)
    for name in bench.METHODS:
        assert f"| {name} |" in report["markdown"]
    assert f"edit_quality.py --model {MODEL} --n 2" in report["markdown"]
    assert report["classifier"]["object_accuracy"] == 1.0
    assert 0 <= report["samples"]["prompt_accuracy"] <= 1
    assert report["cost"]["edits"] == 1 and report["cost"]["ratio"] > 0 and "Cost, 1 edits" in report["markdown"]


def test_edit_kinds_can_be_chosen(bench):
    with pytest.raises(SystemExit) as info:
        bench.main(["--model", MODEL, "--n", "1", "--kinds", "colour,recolour"], echo=lambda _: None)
    assert info.value.code == 2


def test_exact_reconstruction_is_bit_exact(report):
    exact = report["methods"]["BDIA exact (plain)"]  # the first row of the exact inversion
    assert exact["latent_error"] == 0.0
    assert exact["recon_psnr"] == math.inf
    assert report["methods"]["DDIM inversion"]["latent_error"] > 0  # the inexact baseline really is inexact


def test_blended_edits_keep_the_outside_bit_for_bit(bench, report):
    for name in ("mask oracle", "mask noise"):  # always a mask
        row = report["methods"][name]
        assert row["masked"] == 1.0 and row["identical"] == 1.0, name
    for name in (bench.DEFAULT_ROW, "exact + P2P + auto mask", "no removal restart"):  # a mask unless global
        row = report["methods"][name]
        assert row["masked"] == 0.0 or row["identical"] == 1.0, name
    oracle = report["methods"]["mask oracle"]
    assert oracle["background_identical"] == 1.0 and oracle["leakage"] == 0.0
    assert report["methods"]["mask none"]["masked"] == 0.0 and math.isnan(report["methods"]["mask none"]["identical"])
    assert oracle["nfe"] == report["methods"]["BDIA exact (plain)"]["nfe"]


def test_a_chunk_shares_each_network_call_and_matches_the_engine_alone(bench, monkeypatch):
    """The benchmark's scenes are the engine's jobs: side by side in ``Layout(B, b)`` they take one network
    call per step, and each gives the bits ``invert_latent``/``regenerate`` give for it alone in that layout."""
    model = bdia.load_model(MODEL)
    bdia.configure_determinism(model)
    engine = bench.Engine(model, steps=3, guidance=2.0)
    edits = edit_benchmark(2, seed=0)
    z0 = [imaging.to_tensor(bench._pil(e.source.render(model.height))).double() for e in edits]
    params = [engine.params(e.source_prompt, 1.0, {"method": "bdia", "exact": True}) for e in edits]

    calls = []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    inverted = engine.invert(z0, params)
    edited, _ = engine.regenerate(inverted, [e.prompt for e in edits])
    assert len(calls) == params[0].levels + (params[0].levels - 1)  # BDIA: K to invert, K − 1 to regenerate
    monkeypatch.undo()

    for b, (inv, edit) in enumerate(zip(inverted.inversions, edited, strict=True)):
        assert Layout.of(inv.fingerprint) == Layout(2, b)
        alone = invert_latent(model, z0[b], params[b], layout=Layout(2, b))
        assert torch.equal(alone.z_hi, inv.z_hi) and torch.equal(alone.z_lo, inv.z_lo)
        assert torch.equal(regenerate(model, alone, edits[b].prompt).z0, edit.z0)
