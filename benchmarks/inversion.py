"""Inversion cost and round-trip error per method, as ratios to DDIM inversion measured in one run.

    .venv/bin/python benchmarks/inversion.py [--model shapes] [--steps 50] [--repeats 5] [--json]

Times are the best of interleaved repeats (the least disturbed by other load) of one inversion
of the bundled sample image; the round-trip error is that of the recovered source latent after
inverting and regenerating.
Targets (docs/benchmarks.md): BDIA ≤ 1.03× DDIM, exact ≤ 1.05× BDIA float, EDICT ≈ 2× DDIM.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import bdia
from bdia import imaging
from bdia.params import InversionParams, default_model

METHODS = {
    "DDIM inversion": dict(method="ddim", exact=False),
    "BDIA float64": dict(method="bdia", exact=False, state_dtype="float64"),
    "BDIA float32": dict(method="bdia", exact=False, state_dtype="float32"),
    "BDIA exact": dict(method="bdia", exact=True),
    "EDICT": dict(method="edict", exact=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt", default="a red circle and a blue square on a grey background")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = bdia.load_model(args.model)
    z0 = imaging.encode(model, imaging.fit_to_model(imaging.sample_image(), model.height, model.width))
    params = {
        name: InversionParams(model=model.name, prompt=args.prompt, steps=args.steps, **kw).check()
        for name, kw in METHODS.items()
    }
    bdia.invert_latent(model, z0, params["BDIA exact"], keep_trajectory=False)  # warm-up

    times: dict[str, list[float]] = {name: [] for name in METHODS}
    inversions = {}
    for _ in range(args.repeats):
        for name, p in params.items():
            start = time.perf_counter()
            inversions[name] = bdia.invert_latent(model, z0, p, keep_trajectory=False)
            times[name].append(time.perf_counter() - start)

    rows = []
    base = min(times["DDIM inversion"])
    for name, inversion in inversions.items():
        regen = bdia.regenerate(model, inversion)
        reference = inversion.lattice.decode(inversion.z0).double()
        error = regen.z0.double() - reference
        seconds = min(times[name])
        rows.append(
            {
                "method": name,
                "nfe": inversion.nfe,
                "seconds": seconds,
                "ratio_to_ddim": seconds / base,
                "rel_error": float(error.norm() / reference.norm()),
                "max_abs_error": float(error.abs().max()),
                "bit_exact": bool(torch.equal(regen.z0.double(), reference)),
            }
        )
    by = {r["method"]: r for r in rows}
    summary = {
        "model": model.name,
        "steps": args.steps,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "bdia_over_ddim": by["BDIA float64"]["seconds"] / base,
        "exact_over_bdia_float": by["BDIA exact"]["seconds"] / by["BDIA float64"]["seconds"],
        "edict_over_ddim": by["EDICT"]["seconds"] / base,
    }
    print(
        f"model {model.name}, {args.steps} steps, {model.device}, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )
    print("| method | NFE | s per inversion | × DDIM | round-trip rel. error | max abs error | bit-exact |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['nfe']} | {r['seconds']:.3f} | {r['ratio_to_ddim']:.3f} | "
            f"{r['rel_error']:.2e} | {r['max_abs_error']:.2e} | {'yes' if r['bit_exact'] else 'no'} |"
        )
    print(
        f"BDIA/DDIM {summary['bdia_over_ddim']:.3f} (target ≤ 1.03); exact/BDIA float "
        f"{summary['exact_over_bdia_float']:.3f} (target ≤ 1.05); EDICT/DDIM {summary['edict_over_ddim']:.3f} "
        "(target ≈ 2)"
    )
    if args.json:
        print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
