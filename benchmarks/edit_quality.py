"""Shapes-Edit: edit quality per inversion method on held-out shape scenes (issue 4 §3, §4, §6).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_quality.py [--n 100] [--steps 20] [--strength 0.8]
        [--guidance 2] [--sweep] [--json] [--markdown]

Each scene of ``edit_benchmark`` is inverted under its caption and regenerated twice: under the
caption (reconstruction) and under the target caption (the edit, whose ground truth the generator
renders). Scenes are processed B at a time: the engine's walks (``bdia.sampling``) run on a
[B, C, h, w] state, and one batched network call per step serves every scene in diffusers'
[uncond×B, cond×B] layout. Inversion and regeneration of a scene share its batch size and slot,
so BDIA exact round trips stay bit-exact (checked: the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import bdia
from bdia import imaging
from bdia.batching import guided_eps
from bdia.grid import LevelGrid
from bdia.inversion import InversionParams
from bdia.models import DiffusionModel
from bdia.ops import initial_noise, inversion_walk, regeneration_walk
from bdia.sampling import bdia_sample, run
from shapes import Edit, compare, edit_benchmark, edit_success, random_scene, scene_rng, validate
from shapes.classifier import detect
from shapes.scenes import Scene, extent
from shapes.train import CHECK_STREAM

Tensor = torch.Tensor

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


# --- the batched engine ----------------------------------------------------------------------------


class BatchDenoiser:
    """ε̂(z, level) for a [B, C, h, w] state, row b under ``prompts[b]``, one network call per step."""

    def __init__(self, model: DiffusionModel, grid: LevelGrid, prompts: Sequence[str], guidance: float,
                 cache: dict[str, Tensor]) -> None:
        def embed(prompt: str) -> Tensor:
            if prompt not in cache:
                cache[prompt] = model.encode_prompt([prompt])
            return cache[prompt]

        self.model, self.grid, self.guidance, self.nfe = model, grid, float(guidance), 0
        rows = [embed(p) for p in prompts]
        if self.guidance != 1:
            rows = [embed("")] * len(prompts) + rows
        self.embeddings = torch.cat(rows)

    def __call__(self, z: Tensor, level: int) -> Tensor:
        x = z.to(self.model.dtype)
        raw = self.model.predict(torch.cat([x, x]) if self.guidance != 1 else x, self.grid.timestep(level),
                                 self.embeddings)
        b = z.shape[0]
        rows = [raw[[i, b + i]] if self.guidance != 1 else raw[[i]] for i in range(b)]
        self.nfe += 1
        return torch.cat([guided_eps(r, z[i : i + 1], level, self.grid, self.guidance) for i, r in enumerate(rows)])


@dataclass
class Batch:
    """B scenes inverted under one method: the pair, the trajectory (BDIA) and the cost so far."""

    params: InversionParams
    hi: Tensor
    lo: Tensor
    trajectory: list[Tensor] | None
    nfe: int
    seconds: float


@dataclass
class Engine:
    model: DiffusionModel
    steps: int
    guidance: float
    embeddings: dict[str, Tensor] = field(default_factory=dict)

    @property
    def grid(self) -> LevelGrid:
        return LevelGrid.from_scheduler(self.model.scheduler, self.steps)

    def denoiser(self, prompts: Sequence[str]) -> BatchDenoiser:
        return BatchDenoiser(self.model, self.grid, prompts, self.guidance, self.embeddings)

    def invert(self, z0: Tensor, prompts: Sequence[str], params: InversionParams) -> Batch:
        started = time.perf_counter()
        trajectory: list[Tensor] | None = [] if params.method == "bdia" else None
        denoiser = self.denoiser(prompts)
        walk = inversion_walk(self.grid, z0, params, trajectory=trajectory)
        hi, lo = run(walk, denoiser, total=0, stage="invert")
        return Batch(params, hi, lo, trajectory, denoiser.nfe, time.perf_counter() - started)

    def regenerate(self, inv: Batch, prompts: Sequence[str], mask: Tensor | None = None,
                   gamma: float | None = None) -> tuple[Tensor, int, float]:  # fmt: skip
        """(z0 as floats, NFE, seconds) of the regeneration of every scene under ``prompts``."""
        started = time.perf_counter()
        walk = regeneration_walk(self.grid, inv.hi, inv.lo, inv.params, gamma=gamma, trajectory=inv.trajectory,
                                 mask=mask)  # fmt: skip
        denoiser = self.denoiser(prompts)
        z0 = run(walk, denoiser, total=0, stage="regenerate")
        return z0, denoiser.nfe, time.perf_counter() - started

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """DDIM samples (γ = 0, as diffusers' pipeline) of ``prompts`` from the engine's noise of ``seeds``."""
        z = torch.cat([initial_noise(self.model, s) for s in seeds]).double()
        return run(bdia_sample(self.grid, z, gamma=0.0), self.denoiser(prompts), total=0, stage="sample")[1]


# --- metrics ---------------------------------------------------------------------------------------


def images(z0: Tensor) -> list[np.ndarray]:
    """8-bit RGB arrays of a batch of pixel-space latents (the engine's own rounding)."""
    return [np.asarray(imaging.to_image(z[None].float())) for z in z0]


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


def evaluate(engine: Engine, edits: Sequence[Edit], strength: float, methods: Sequence[str], batch: int,
             reconstruct: bool = True) -> dict[str, dict]:
    """Per method: the table's metrics over ``edits``."""
    model, res = engine.model, engine.model.height
    acc: dict[str, dict[str, list]] = {m: {} for m in methods}

    def add(method: str, key: str, values: Sequence) -> None:
        acc[method].setdefault(key, []).extend(values)

    for first in range(0, len(edits), batch):
        chunk = edits[first : first + batch]
        sources = [e.source.render(res) for e in chunk]
        targets = [e.target.render(res) for e in chunk]
        z0 = torch.cat([imaging.to_tensor(imaging.load_image(_pil(s))) for s in sources]).double()
        regions = [e.region(res, MASK_DILATE) for e in chunk]
        mask = torch.from_numpy(np.stack(regions))[:, None]
        inversions: dict[str, Batch] = {}
        for name in methods:
            fields_, masked, edit_gamma = METHODS[name]
            params = InversionParams(model=model.name, steps=engine.steps, strength=strength,
                                     guidance_scale=engine.guidance, **fields_).validate()
            key = json.dumps(fields_, sort_keys=True)
            if key not in inversions:
                inversions[key] = engine.invert(z0, [e.source_prompt for e in chunk], params)
            inv = inversions[key]
            if reconstruct and not masked and edit_gamma is None:
                recon, _, _ = engine.regenerate(inv, [e.source_prompt for e in chunk])
                if params.fixed_point and not torch.equal(recon, z0):
                    raise AssertionError(f"{name}: the reconstruction is not bit-exact (batch layouts differ?)")
                add(name, "latent_error", [float((recon - z0).abs().max())])
                add(name, "recon_psnr", [psnr(a, b) for a, b in zip(images(recon), sources, strict=True)])
            edited, nfe, seconds = engine.regenerate(inv, [e.prompt for e in chunk], mask if masked else None,
                                                     edit_gamma)
            results = images(edited)
            if masked:
                inside = torch.equal(torch.where(mask, z0, edited), z0) if params.fixed_point else None
                add(name, "outside_mask_identical", [inside])
            add(name, "success", [edit_success(r, e) for r, e in zip(results, chunk, strict=True)])
            add(name, "background_psnr", [psnr(r, s, ~g) for r, s, g in zip(results, sources, regions, strict=True)])
            add(name, "target_psnr", [psnr(r, t) for r, t in zip(results, targets, strict=True)])
            add(name, "kept_iou", [v for r, e in zip(results, chunk, strict=True) for v in kept_iou(r, e, res)])
            add(name, "nfe", [inv.nfe + nfe] * len(chunk))
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
        "success_by_kind": {k: mean([s for s, kk in zip(values["success"], values["kind"], strict=True) if kk == k])
                            for k in dict.fromkeys(values["kind"])},
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
        z0 = engine.sample([s.caption for s in chunk], range(first, first + len(chunk)))
        results += [compare(img, s, by_position=False) for img, s in zip(images(z0), chunk, strict=True)]
    shapes = sum(r["shapes"] for r in results)
    return {"prompts": n, "prompt_accuracy": mean([r["ok"] for r in results]),
            "object_accuracy": sum(r["objects_ok"] for r in results) / max(shapes, 1)}


def fmt(x: float, digits: int = 1) -> str:
    return "inf" if x == math.inf else f"{x:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = ["| method | recon. PSNR | latent max err | edit success | background PSNR | kept-shape IoU | "
             "PSNR to target | NFE | s / edit |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        recon = (fmt(r["recon_psnr"]), f"{r['latent_error']:.1e}") if "recon_psnr" in r else ("(as exact)",) * 2
        lines.append(f"| {name} | {recon[0]} | {recon[1]} | {r['edit_success']:.0%} | {fmt(r['background_psnr'])} | "
                     f"{r['kept_iou']:.3f} | {fmt(r['target_psnr'])} | {r['nfe']:.0f} | {r['seconds_per_edit']:.2f} |")
    return "\n".join(lines)


def sweep(model: DiffusionModel, edits: Sequence[Edit], steps: int, guidances: Sequence[float],
          strengths: Sequence[float], methods: Sequence[str], batch: int) -> list[dict]:
    """Edit success and background PSNR per (guidance, strength) for ``methods`` (no reconstructions)."""
    out = []
    for g in guidances:
        engine = Engine(model, steps, g)
        for s in strengths:
            rows = evaluate(engine, edits, s, methods, batch, reconstruct=False)
            out += [{"guidance": g, "strength": s, "method": m, **{k: r[k] for k in ("edit_success",
                    "background_psnr", "target_psnr", "kept_iou")}} for m, r in rows.items()]
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
        sys.argv[1:] if argv is None else list(argv))
    model = bdia.load_model(args.model)
    if not model.pixel_space:
        parser.error("the benchmark compares pixels: it needs a pixel-space model such as shapes")
    edits = edit_benchmark(args.n, args.seed)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(
        SWEEP_METHODS if args.sweep else METHODS)
    unknown = set(methods) - METHODS.keys()
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    report: dict = {"command": command, "model": model.name, "n": args.n, "steps": args.steps}
    lines = [f"`{command}`", ""]

    if args.sweep:
        floats = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
        rows = sweep(model, edits, args.steps, floats(args.sweep_guidance), floats(args.sweep_strength), methods,
                     args.batch)
        report["sweep"] = rows
        lines += [f"Guidance × strength sweep, {args.n} scenes, {args.steps} steps:", "",
                  "| guidance | strength | method | edit success | background PSNR | PSNR to target | kept IoU |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['guidance']:g} | {r['strength']:g} | {r['method']} | {r['edit_success']:.0%} | "
                  f"{fmt(r['background_psnr'])} | {fmt(r['target_psnr'])} | {r['kept_iou']:.3f} |" for r in rows]
    else:
        check = validate(args.validate)
        report["classifier"] = check
        lines += [f"Classifier on {check['scenes']} ground-truth renders: object accuracy "
                  f"{check['object_accuracy']:.1%}, scene accuracy {check['scene_accuracy']:.1%}.", ""]
        engine = Engine(model, args.steps, args.guidance)
        if args.samples:
            started = time.perf_counter()
            acc = sample_accuracy(engine, args.samples, args.batch)
            report["samples"] = acc
            lines += [f"Samples (DDIM, {args.steps} steps, guidance {args.guidance:g}) showing their prompt's "
                      f"colours and shapes: {acc['prompt_accuracy']:.0%} of {acc['prompts']} prompts "
                      f"(objects {acc['object_accuracy']:.0%}; bar ≥ 80%) [{time.perf_counter() - started:.0f} s]", ""]
        rows = evaluate(engine, edits, args.strength, methods, args.batch)
        report["methods"] = rows
        levels = InversionParams(model=model.name, steps=args.steps, strength=args.strength).levels
        lines += [f"Shapes-Edit: {args.n} edits ({', '.join(dict.fromkeys(e.kind for e in edits))}), model "
                  f"{model.name}, {args.steps} steps, strength {args.strength:g} ({levels} levels), guidance "
                  f"{args.guidance:g} for inversion and regeneration, mask and background = edit region "
                  f"+{MASK_DILATE} px, {torch.get_num_threads()} CPU thread(s), {args.batch} scenes per call.",
                  "", table(rows), ""]
        if "BDIA exact + mask" in rows:
            lines.append("Masked edit: pixels outside the mask identical to the source: "
                         f"{'yes' if rows['BDIA exact + mask'].get('outside_mask_identical') else 'no'}.")
        if {"BDIA exact", "DDIM inversion"} <= rows.keys():
            exact, ddim = rows["BDIA exact"], rows["DDIM inversion"]
            lines.append(f"Bars: BDIA exact edit success {exact['edit_success']:.0%} (≥ 70%: "
                         f"{'met' if exact['edit_success'] >= 0.7 else 'missed'}); background PSNR "
                         f"{fmt(exact['background_psnr'])} vs DDIM {fmt(ddim['background_psnr'])} dB "
                         f"({'met' if exact['background_psnr'] > ddim['background_psnr'] else 'missed'}).")
            by_kind = ", ".join(f"{k} {v:.0%}" for k, v in exact["success_by_kind"].items())
            lines.append(f"BDIA exact success by edit kind: {by_kind}.")
    text = "\n".join(lines)
    report["markdown"] = text
    echo(text)
    if args.json and not args.markdown:
        echo(json.dumps({k: v for k, v in report.items() if k != "markdown"}, default=str))
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)  # the CPU bits depend on the thread count (SPEC §5); one thread is also fastest here
    main()
