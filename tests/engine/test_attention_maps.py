"""Smoke test of the attention-map measurement (benchmarks/attention_maps.py) on a tiny model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "attention_maps.py"


def test_it_scores_every_layer_and_step_of_the_capture_window(capsys):
    spec = importlib.util.spec_from_file_location("attention_maps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        out = module.run(4, "tiny-random-pixel", steps=6)
        module.main(["--n", "4", "--model", "tiny-random-pixel", "--steps", "6"])
    finally:
        del sys.modules[spec.name]
    kinds = {key[0] for key in out["scores"]}
    assert kinds == set(module.KINDS) and out["steps"] == 6
    assert all(0 <= v <= 1 for values in out["scores"].values() for v in values)
    steps = {key[3] for key in out["scores"]}
    assert steps == set(range(max(steps) + 1)) and 0 < len(steps) < 6  # the capture window, from step 0
    printed = capsys.readouterr().out
    assert "| colour | noun |" in printed and "| background | noun |" in printed
