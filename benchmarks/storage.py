"""Bytes per cached inversion, and what packing its trajectory saves and costs.

    .venv/bin/python benchmarks/storage.py [--steps 50 999] [--repeats 3] [--json]

For ``tiny-random`` (latent 4×8×8) an exact inversion of the sample image is made at each step count and
serialised as the cache stores it: the trajectory packed (``bdia.inversion.pack_trajectory``) and, for
comparison, as a plain int64 tensor (the format before). For SD 1.5's 4×64×64 latent the plain size is
computed (4 + K tensors of 4·64·64 int64) and the packed size measured on a synthetic trajectory with the
statistics of a real one: levels z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε_t on SD 1.5's schedule, z0 and ε ~ N(0, 1),
ε_t drifting by 5 % a level, on the 2^−40 fixed-point lattice. Times are the best of ``--repeats``.
The alternative measured beside it, dropping the trajectory, costs K network evaluations per masked edit
(a regeneration under the source prompt rebuilds it exactly); its time is that of a K-step
regeneration of ``tiny-random`` here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

import bdia
from bdia.inversion import pack_trajectory, unpack_trajectory

SD15_LATENT = (4, 64, 64)
SAMPLE = Path(bdia.__file__).parent / "assets" / "sample.png"


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


def plain_bytes(inversion: bdia.Inversion) -> int:
    """The size of the entry with the trajectory as a plain tensor (the format before packing)."""
    tensors = {"z_hi": inversion.z_hi, "z_lo": inversion.z_lo, "z0": inversion.z0, "trajectory": inversion.trajectory}
    return len(save({k: v.contiguous().clone() for k, v in tensors.items()}, metadata=inversion.metadata()))


def packing(trajectory: torch.Tensor, repeats: int) -> dict[str, Any]:
    pack_s, (packed, info) = best(lambda: pack_trajectory(trajectory), repeats)
    unpack_s, back = best(lambda: unpack_trajectory(packed, info), repeats)
    assert torch.equal(back, trajectory), "packing lost bits"
    raw = trajectory.numel() * trajectory.element_size()
    return {
        "trajectory_bytes": raw,
        "packed_bytes": packed.numel(),
        "ratio": round(raw / packed.numel(), 3),
        "pack_s": round(pack_s, 4),
        "unpack_s": round(unpack_s, 4),
    }


def tiny(steps: int, repeats: int) -> dict[str, Any]:
    model = bdia.load_model("tiny-random", device="cpu")
    bdia.configure_determinism(model)
    inversion = bdia.invert(model, SAMPLE, "", steps=steps)
    regenerate_s, _ = best(lambda: bdia.regenerate(model, inversion, ""), 1)
    row = {
        "model": "tiny-random",
        "steps": steps,
        "plain_entry_bytes": plain_bytes(inversion),
        "packed_entry_bytes": len(inversion.to_bytes()),
        "pair_only_bytes": _pair_only(inversion),
        "recompute_nfe": inversion.level,
        "recompute_s": round(regenerate_s, 3),
    }
    return {**row, **packing(inversion.trajectory, repeats)}


def _pair_only(inversion: bdia.Inversion) -> int:
    tensors = {"z_hi": inversion.z_hi, "z_lo": inversion.z_lo, "z0": inversion.z0}
    return len(save({k: v.contiguous().clone() for k, v in tensors.items()}, metadata=inversion.metadata()))


def sd15(steps: int, repeats: int) -> dict[str, Any]:
    """SD 1.5's latent: plain sizes computed, the packed size measured on a synthetic trajectory."""
    rng = np.random.default_rng(0)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD 1.5's scaled-linear schedule
    alpha_bar = np.cumprod(1 - betas)
    timesteps = np.linspace(0, 999, steps).round().astype(int)
    z0, eps = rng.standard_normal(SD15_LATENT), rng.standard_normal(SD15_LATENT)
    levels = [z0]
    for t in timesteps:
        eps = eps + 0.05 * rng.standard_normal(SD15_LATENT)
        levels.append(np.sqrt(alpha_bar[t]) * z0 + np.sqrt(1 - alpha_bar[t]) * eps)
    trajectory = torch.from_numpy(np.round(np.stack(levels) * 2.0**40).astype(np.int64))
    state = int(np.prod(SD15_LATENT)) * 8
    row = {
        "model": "SD 1.5 (4x64x64, computed; packed: synthetic)",
        "steps": steps,
        "plain_entry_bytes": (3 + steps + 1) * state,
        "pair_only_bytes": 3 * state,
        "recompute_nfe": steps,
    }
    result = {**row, **packing(trajectory, repeats)}
    result["packed_entry_bytes"] = 3 * state + result["packed_bytes"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 999])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [tiny(steps, args.repeats) for steps in args.steps] + [sd15(steps, args.repeats) for steps in args.steps]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | steps | entry, plain | entry, packed | pair only | trajectory ratio | pack | unpack | recompute |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        recompute = f"{r['recompute_nfe']} NFE" + (f", {r['recompute_s']} s" if "recompute_s" in r else "")
        print(
            f"| {r['model']} | {r['steps']} | {r['plain_entry_bytes']:,} | {r['packed_entry_bytes']:,} | "
            f"{r['pair_only_bytes']:,} | {r['ratio']}× | {r['pack_s'] * 1e3:.0f} ms | {r['unpack_s'] * 1e3:.0f} ms | "
            f"{recompute} |"
        )


if __name__ == "__main__":
    main()
