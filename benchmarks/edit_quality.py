"""Shapes-Edit: edit quality per inversion method on held-out shape scenes (docs/benchmarks.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_quality.py [--n 100] [--steps 20] [--strength 0.8]
        [--guidance 2] [--sweep] [--json] [--markdown]

Each scene of ``edit_benchmark`` is inverted under its caption and regenerated twice: under the
caption (reconstruction) and under the target caption (the edit, whose ground truth the generator
renders). The work is the engine's own: every scene is an ``inverting`` job, then ``regenerating``
jobs (``bdia.ops``), and the B scenes of a chunk run side by side (``bdia.batching.advance``), scene
b in ``Layout(B, b)``, so one network call per step serves the whole chunk in diffusers'
[uncond×B, cond×B] layout. A regeneration keeps its inversion's layout, so BDIA exact round trips
stay bit-exact (checked: the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level shapes folder

import numpy as np
import torch

import bdia
from bdia import imaging
from bdia.batching import Job, Lane, Layout, advance, drive
from bdia.inversion import Inversion
from bdia.models import DiffusionModel
from bdia.ops import Regeneration, inverting, regenerating, sampling
from bdia.params import InversionParams
from shapes import Edit, compare, edit_benchmark, edit_success, random_scene, scene_rng, validate
from shapes.classifier import detect
from shapes.scenes import Scene, extent
from shapes.train import CHECK_STREAM

Tensor = torch.Tensor
T = TypeVar("T")

#: name → (InversionParams fields, masked, the edit's own γ or None). Rows that share the fields reuse one
#: inversion; an edit γ < 1 regenerates the exact γ = 1 inversion on a float64 state (``bdia.regenerate(gamma=…)``).
METHODS: dict[str, tuple[dict, bool, float | None]] = {
    "DDIM inversion": (dict(method="ddim", exact=False), False, None),
    "EDICT": (dict(method="edict", exact=False), False, None),
    "BDIA γ=1 float64": (dict(method="bdia", exact=False, state_dtype="float64"), False, None),
    "BDIA exact": (dict(method="bdia", exact=True), False, None),
    "BDIA γ=0.94": (dict(method="bdia", gamma=0.94, exact=False, state_dtype="float64"), False, None),
    "BDIA exact + mask": (dict(method="bdia", exact=True), True, None),
    "BDIA exact (edit γ=0.5)": (dict(method="bdia", exact=True), False, 0.5),
    "BDIA exact + mask (edit γ=0.5)": (dict(method="bdia", exact=True), True, 0.5),
}
SWEEP_METHODS = ("DDIM inversion", "BDIA exact", "BDIA exact + mask")
MASK_DILATE = 2  # pixels the edit region grows by, for the mask and the background


# --- the engine's jobs, side by side ---------------------------------------------------------------


def run_jobs(model: DiffusionModel, jobs: Sequence[Job[T]]) -> list[T]:
    """Every job's result: jobs side by side (``advance`` shares one network call among the jobs of one
    batch size in distinct slots), or a lone job with ``drive``."""
    if len(jobs) == 1:
        return [drive(model, jobs[0])]
    lanes = [Lane(job) for job in jobs]
    while any(lane.live for lane in lanes):
        advance(model, lanes)
    for lane in lanes:
        if lane.error is not None:
            raise lane.error
    return [lane.result for lane in lanes]  # type: ignore[misc]


@dataclass
class Inverted:
    """B scenes inverted side by side under one method, and the wall time that took."""

    inversions: list[Inversion]
    seconds: float


@dataclass
class Engine:
    model: DiffusionModel
    steps: int
    guidance: float

    def params(self, prompt: str, strength: float, fields: dict) -> InversionParams:
        return InversionParams(
            model=self.model.name,
            prompt=prompt,
            steps=self.steps,
            strength=strength,
            guidance_scale=self.guidance,
            **fields,
        ).check()

    def invert(self, z0: Sequence[Tensor], params: Sequence[InversionParams]) -> Inverted:
        """Invert scene b's clean latent ``z0[b]`` under ``params[b]`` in ``Layout(B, b)``."""
        started, batch = time.perf_counter(), len(z0)
        jobs = [
            inverting(self.model, z, p, keep_trajectory=p.method == "bdia", layout=Layout(batch, b))
            for b, (z, p) in enumerate(zip(z0, params, strict=True))
        ]
        return Inverted(run_jobs(self.model, jobs), time.perf_counter() - started)

    def regenerate(
        self,
        inverted: Inverted,
        prompts: Sequence[str | None],
        masks: Sequence[Tensor] | None = None,
        gamma: float | None = None,
    ) -> tuple[list[Regeneration], float]:
        """Every scene's regeneration under its prompt (``None``: its caption), in its inversion's layout; and
        the wall time."""
        started = time.perf_counter()
        masks = masks if masks is not None else [None] * len(prompts)
        jobs = [
            regenerating(self.model, inv, prompt, mask=mask, gamma=gamma)
            for inv, prompt, mask in zip(inverted.inversions, prompts, masks, strict=True)
        ]
        return run_jobs(self.model, jobs), time.perf_counter() - started

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        """DDIM samples (γ = 0, as diffusers' pipeline) of ``prompts`` from the engine's noise of ``seeds``."""
        batch = len(prompts)
        jobs = [
            sampling(
                self.model,
                prompt,
                seed=seed,
                steps=self.steps,
                gamma=0.0,
                guidance_scale=self.guidance,
                layout=Layout(batch, b),
            )
            for b, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True))
        ]
        return [np.asarray(s.image) for s in run_jobs(self.model, jobs)]


# --- metrics ---------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64))[where if where is not None else slice(None)]
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def kept_iou(result: np.ndarray, edit: Edit, resolution: int) -> list[float]:
    """Per unedited shape: IoU of its source mask and the object the classifier finds nearest to it."""
    objects = detect(result).objects
    out = []
    for shape in edit.kept_shapes:
        truth = Scene((shape,)).masks(resolution)[0] >= 0.5
        near = [o for o in objects if math.dist(o.center, shape.center) <= extent(shape.size)]
        if not near:
            out.append(0.0)
            continue
        found = min(near, key=lambda o: math.dist(o.center, shape.center)).mask >= 0.5
        out.append(float((truth & found).sum() / max((truth | found).sum(), 1)))
    return out


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# --- the benchmark ---------------------------------------------------------------------------------


def evaluate(
    engine: Engine, edits: Sequence[Edit], strength: float, methods: Sequence[str], batch: int, reconstruct: bool = True
) -> dict[str, dict]:
    """Per method: the table's metrics over ``edits``."""
    res = engine.model.height
    acc: dict[str, dict[str, list]] = {m: {} for m in methods}

    def add(method: str, key: str, values: Sequence) -> None:
        acc[method].setdefault(key, []).extend(values)

    for first in range(0, len(edits), batch):
        chunk = edits[first : first + batch]
        sources = [e.source.render(res) for e in chunk]
        targets = [e.target.render(res) for e in chunk]
        z0 = [imaging.to_tensor(imaging.load_image(_pil(s))).double() for s in sources]
        regions = [e.region(res, MASK_DILATE) for e in chunk]
        masks = [torch.from_numpy(g)[None, None] for g in regions]
        inversions: dict[str, Inverted] = {}
        for name in methods:
            fields, masked, edit_gamma = METHODS[name]
            params = [engine.params(e.source_prompt, strength, fields) for e in chunk]
            key = json.dumps(fields, sort_keys=True)
            if key not in inversions:
                inversions[key] = engine.invert(z0, params)
            inv = inversions[key]
            exact = params[0].fixed_point
            if reconstruct and not masked and edit_gamma is None:
                recons, _ = engine.regenerate(inv, [None] * len(chunk))
                if exact and not all(torch.equal(r.z0, z) for r, z in zip(recons, z0, strict=True)):
                    raise AssertionError(f"{name}: the reconstruction is not bit-exact (batch layouts differ?)")
                add(name, "latent_error", [max(float((r.z0 - z).abs().max()) for r, z in zip(recons, z0, strict=True))])
                add(name, "recon_psnr", [psnr(np.asarray(r.image), s) for r, s in zip(recons, sources, strict=True)])
            edited, seconds = engine.regenerate(inv, [e.prompt for e in chunk], masks if masked else None, edit_gamma)
            results = [np.asarray(r.image) for r in edited]
            if masked:
                kept = [torch.equal(torch.where(m, z, r.z0), z) for m, z, r in zip(masks, z0, edited, strict=True)]
                add(name, "outside_mask_identical", [all(kept) if exact else None])
            add(name, "success", [edit_success(r, e) for r, e in zip(results, chunk, strict=True)])
            add(name, "background_psnr", [psnr(r, s, ~g) for r, s, g in zip(results, sources, regions, strict=True)])
            add(name, "target_psnr", [psnr(r, t) for r, t in zip(results, targets, strict=True)])
            add(name, "kept_iou", [v for r, e in zip(results, chunk, strict=True) for v in kept_iou(r, e, res)])
            add(name, "nfe", [i.nfe + r.nfe for i, r in zip(inv.inversions, edited, strict=True)])
            add(name, "seconds", [(inv.seconds + seconds) / len(chunk)] * len(chunk))
            add(name, "kind", [e.kind for e in chunk])
    return {name: summarise(values) for name, values in acc.items()}


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


def summarise(values: dict[str, list]) -> dict:
    out = {
        "edit_success": mean(values["success"]),
        "background_psnr": mean(values["background_psnr"]),
        "target_psnr": mean(values["target_psnr"]),
        "kept_iou": mean(values["kept_iou"]),
        "nfe": mean(values["nfe"]),
        "seconds_per_edit": mean(values["seconds"]),
        "success_by_kind": {
            k: mean([s for s, kk in zip(values["success"], values["kind"], strict=True) if kk == k])
            for k in dict.fromkeys(values["kind"])
        },
    }
    if "recon_psnr" in values:
        out["recon_psnr"] = mean(values["recon_psnr"])
        out["latent_error"] = max(values["latent_error"])
    if "outside_mask_identical" in values:
        out["outside_mask_identical"] = all(values["outside_mask_identical"])
    return out


def sample_accuracy(engine: Engine, n: int, batch: int, seed: int = 0) -> dict:
    """How often samples show their prompt's objects (colour and kind, right count), by the classifier."""
    scenes = [random_scene(scene_rng(seed, i, CHECK_STREAM)) for i in range(n)]
    results = []
    for first in range(0, n, batch):
        chunk = scenes[first : first + batch]
        samples = engine.sample([s.caption for s in chunk], range(first, first + len(chunk)))
        results += [compare(img, s, by_position=False) for img, s in zip(samples, chunk, strict=True)]
    shapes = sum(r["shapes"] for r in results)
    return {
        "prompts": n,
        "prompt_accuracy": mean([r["ok"] for r in results]),
        "object_accuracy": sum(r["objects_ok"] for r in results) / max(shapes, 1),
    }


def fmt(x: float, digits: int = 1) -> str:
    return "inf" if x == math.inf else f"{x:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| method | recon. PSNR | latent max err | edit success | background PSNR | kept-shape IoU | "
        "PSNR to target | NFE | s / edit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        recon = (fmt(r["recon_psnr"]), f"{r['latent_error']:.1e}") if "recon_psnr" in r else ("(as exact)",) * 2
        lines.append(
            f"| {name} | {recon[0]} | {recon[1]} | {r['edit_success']:.0%} | {fmt(r['background_psnr'])} | "
            f"{r['kept_iou']:.3f} | {fmt(r['target_psnr'])} | {r['nfe']:.0f} | {r['seconds_per_edit']:.2f} |"
        )
    return "\n".join(lines)


def sweep(
    model: DiffusionModel,
    edits: Sequence[Edit],
    steps: int,
    guidances: Sequence[float],
    strengths: Sequence[float],
    methods: Sequence[str],
    batch: int,
) -> list[dict]:
    """Edit success and background PSNR per (guidance, strength) for ``methods`` (no reconstructions)."""
    out = []
    for g in guidances:
        engine = Engine(model, steps, g)
        for s in strengths:
            rows = evaluate(engine, edits, s, methods, batch, reconstruct=False)
            out += [
                {
                    "guidance": g,
                    "strength": s,
                    "method": m,
                    **{k: r[k] for k in ("edit_success", "background_psnr", "target_psnr", "kept_iou")},
                }
                for m, r in rows.items()
            ]
    return out


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=100, help="benchmark scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--guidance", type=float, default=2.0, help="for inversion and regeneration")
    parser.add_argument("--batch", type=int, default=50, help="scenes per network call")
    parser.add_argument("--samples", type=int, default=100, help="prompts for the sample-accuracy figure (0: skip)")
    parser.add_argument("--validate", type=int, default=200, help="ground-truth scenes for the classifier check")
    parser.add_argument("--methods", default=None, help="comma-separated rows (default: all; sweep: DDIM and exact)")
    parser.add_argument("--sweep", action="store_true", help="only the guidance × strength sweep")
    parser.add_argument("--sweep-guidance", default="1,2,3")
    parser.add_argument("--sweep-strength", default="0.6,0.8,1.0")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print only the markdown report")
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_quality.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    model = bdia.load_model(args.model)
    bdia.configure_determinism(model)  # exact mode needs deterministic kernels
    if not model.pixel_space:
        parser.error("the benchmark compares pixels: it needs a pixel-space model such as shapes")
    edits = edit_benchmark(args.n, args.seed)
    methods = (
        [m.strip() for m in args.methods.split(",")] if args.methods else list(SWEEP_METHODS if args.sweep else METHODS)
    )
    unknown = set(methods) - METHODS.keys()
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    report: dict = {"command": command, "model": model.name, "n": args.n, "steps": args.steps}
    lines = [f"`{command}`", ""]

    if args.sweep:
        floats = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
        rows = sweep(
            model, edits, args.steps, floats(args.sweep_guidance), floats(args.sweep_strength), methods, args.batch
        )
        report["sweep"] = rows
        lines += [
            f"Guidance × strength sweep, {args.n} scenes, {args.steps} steps:",
            "",
            "| guidance | strength | method | edit success | background PSNR | PSNR to target | kept IoU |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['guidance']:g} | {r['strength']:g} | {r['method']} | {r['edit_success']:.0%} | "
            f"{fmt(r['background_psnr'])} | {fmt(r['target_psnr'])} | {r['kept_iou']:.3f} |"
            for r in rows
        ]
    else:
        check = validate(args.validate)
        report["classifier"] = check
        lines += [
            f"Classifier on {check['scenes']} ground-truth renders: object accuracy "
            f"{check['object_accuracy']:.1%}, scene accuracy {check['scene_accuracy']:.1%}.",
            "",
        ]
        engine = Engine(model, args.steps, args.guidance)
        if args.samples:
            started = time.perf_counter()
            acc = sample_accuracy(engine, args.samples, args.batch)
            report["samples"] = acc
            lines += [
                f"Samples (DDIM, {args.steps} steps, guidance {args.guidance:g}) showing their prompt's "
                f"colours and shapes: {acc['prompt_accuracy']:.0%} of {acc['prompts']} prompts "
                f"(objects {acc['object_accuracy']:.0%}; bar ≥ 80%) [{time.perf_counter() - started:.0f} s]",
                "",
            ]
        rows = evaluate(engine, edits, args.strength, methods, args.batch)
        report["methods"] = rows
        levels = InversionParams(model=model.name, steps=args.steps, strength=args.strength).levels
        lines += [
            f"Shapes-Edit: {args.n} edits ({', '.join(dict.fromkeys(e.kind for e in edits))}), model "
            f"{model.name}, {args.steps} steps, strength {args.strength:g} ({levels} levels), guidance "
            f"{args.guidance:g} for inversion and regeneration, mask and background = edit region "
            f"+{MASK_DILATE} px, {torch.get_num_threads()} CPU thread(s), {args.batch} scenes per call.",
            "",
            table(rows),
            "",
        ]
        if "BDIA exact + mask" in rows:
            lines.append(
                "Masked edit: pixels outside the mask identical to the source: "
                f"{'yes' if rows['BDIA exact + mask'].get('outside_mask_identical') else 'no'}."
            )
        if {"BDIA exact", "DDIM inversion"} <= rows.keys():
            exact, ddim = rows["BDIA exact"], rows["DDIM inversion"]
            lines.append(
                f"Bars: BDIA exact edit success {exact['edit_success']:.0%} (≥ 70%: "
                f"{'met' if exact['edit_success'] >= 0.7 else 'missed'}); background PSNR "
                f"{fmt(exact['background_psnr'])} vs DDIM {fmt(ddim['background_psnr'])} dB "
                f"({'met' if exact['background_psnr'] > ddim['background_psnr'] else 'missed'})."
            )
            by_kind = ", ".join(f"{k} {v:.0%}" for k, v in exact["success_by_kind"].items())
            lines.append(f"BDIA exact success by edit kind: {by_kind}.")
    text = "\n".join(lines)
    report["markdown"] = text
    echo(text)
    if args.json and not args.markdown:
        echo(json.dumps({k: v for k, v in report.items() if k != "markdown"}, default=str))
    return report


if __name__ == "__main__":
    # The CPU bits depend on the thread count (docs/exactness.md); one thread is also fastest here.
    torch.set_num_threads(1)
    main()
