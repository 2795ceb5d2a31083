"""Shapes-Edit v2: edit quality per method on held-out shape scenes (docs/benchmarks.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_quality.py [--n 200] [--steps 20] [--strength 0.8]
        [--guidance 2] [--methods …] [--sweep] [--json] [--markdown]

Edits cycle over colour, kind, add, remove (local) and background (global). Each scene is inverted
under its caption and regenerated under the caption (reconstruction, for exact rows) and under the
target caption (the edit, whose ground truth the generator renders). Methods: the baselines (DDIM
inversion, EDICT, BDIA exact as before), Prompt-to-Prompt with blending on DDIM inversion, and the
controlled exact edit (``bdia.editing``: the default), with ablations of its control, mask and γ.
The work is the engine's own: every scene is an ``inverting`` job, then ``regenerating``
jobs (``bdia.ops``), and the B scenes of a chunk run side by side (``bdia.batching.drive_together``), scene
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level shapes folder

import numpy as np
import torch

import bdia
from bdia import imaging
from bdia.batching import Layout, drive_together
from bdia.inversion import Inversion
from bdia.models import DiffusionModel
from bdia.ops import Regeneration, inverting, regenerating, sampling
from bdia.params import EditParams, InversionParams
from shapes import (
    EDIT_KINDS,
    GLOBAL_EDIT_KINDS,
    Edit,
    compare,
    edit_benchmark,
    edit_success,
    random_scene,
    scene_rng,
    validate,
)
from shapes.classifier import detect, edited_object, nearest_object
from shapes.scenes import Scene, grow
from shapes.train import CHECK_STREAM

Tensor = torch.Tensor

BDIA_EXACT = dict(method="bdia", exact=True)
PLAIN = dict(control="none", mask_mode="none")
P2P = dict(control="cross")


@dataclass(frozen=True)
class Method:
    """A benchmark row: the inversion's fields, the edit's ``EditParams`` fields (the model's edit defaults fill
    the rest), an oracle mask, the edit γ."""

    inversion: dict
    edit: dict
    oracle: bool = False
    gamma: float | None = None


DEFAULT_ROW = "default (the model's edit settings)"
#: Rows that share the inversion fields reuse one inversion.
METHODS: dict[str, Method] = {
    "DDIM inversion": Method(dict(method="ddim", exact=False), PLAIN),
    "DDIM + P2P + blend": Method(dict(method="ddim", exact=False), P2P),
    "DDIM + the default's control and blend": Method(dict(method="ddim", exact=False), {}),
    "EDICT": Method(dict(method="edict", exact=False), PLAIN),
    "BDIA exact (plain)": Method(BDIA_EXACT, PLAIN, gamma=1.0),
    "BDIA exact (plain; edit γ=0.5)": Method(BDIA_EXACT, PLAIN, gamma=0.5),
    "exact + P2P + auto mask": Method(BDIA_EXACT, P2P),
    DEFAULT_ROW: Method(BDIA_EXACT, {}),
    "control none": Method(BDIA_EXACT, dict(control="none")),
    "control cross+self": Method(BDIA_EXACT, dict(control="cross+self")),
    "mask none": Method(BDIA_EXACT, dict(mask_mode="none")),
    "mask attention": Method(BDIA_EXACT, dict(mask_mode="attention")),
    "mask noise": Method(BDIA_EXACT, dict(mask_mode="noise")),
    "mask oracle": Method(BDIA_EXACT, {}, oracle=True),
    "no removal restart": Method(BDIA_EXACT, dict(restart_removed=False)),
    "unchanged objects not kept": Method(BDIA_EXACT, dict(keep_unchanged=False)),
    "unchanged pixels regenerated": Method(BDIA_EXACT, dict(unchanged_tolerance=0)),
    "edit guidance 2": Method(BDIA_EXACT, dict(guidance_scale=2.0)),
    "target γ=1": Method(BDIA_EXACT, {}, gamma=1.0),
    "target γ=0.8": Method(BDIA_EXACT, {}, gamma=0.8),
}
ALL_KINDS = EDIT_KINDS + GLOBAL_EDIT_KINDS
SWEEP_METHODS = ("DDIM inversion", "DDIM + P2P + blend", DEFAULT_ROW)
MASK_DILATE = 2  # pixels the edit region grows by, for the mask and the background


# --- the engine's jobs, side by side ---------------------------------------------------------------


@dataclass
class Inverted:
    """B scenes inverted side by side under one method, and the wall time that took."""

    inversions: list[Inversion]
    seconds: float


@dataclass
class Engine:
    model: DiffusionModel
    steps: int
    guidance: float  # the inversions'
    edit_guidance: float | None = None  # the edits' where a row does not say (None: the model's edit default)

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
        return Inverted(drive_together(self.model, jobs), time.perf_counter() - started)

    def regenerate(
        self,
        inverted: Inverted,
        prompts: Sequence[str | None],
        masks: Sequence[Tensor] | None = None,
        gamma: float | None = None,
        edit: EditParams | None = None,
    ) -> tuple[list[Regeneration], float]:
        """Every scene's regeneration under its prompt (``None``: its caption), in its inversion's layout; and
        the wall time."""
        started = time.perf_counter()
        masks = masks if masks is not None else [None] * len(prompts)
        jobs = [
            regenerating(self.model, inv, prompt, mask=mask, gamma=gamma, edit=edit)
            for inv, prompt, mask in zip(inverted.inversions, prompts, masks, strict=True)
        ]
        return drive_together(self.model, jobs), time.perf_counter() - started

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        """Samples of ``prompts`` from the engine's noise of ``seeds`` at the model's sampling defaults."""
        batch = len(prompts)
        jobs = [
            sampling(self.model, prompt, seed=seed, layout=Layout(batch, b))
            for b, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True))
        ]
        return [np.asarray(s.image) for s in drive_together(self.model, jobs)]


# --- metrics ---------------------------------------------------------------------------------------


def mse(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64))[where if where is not None else slice(None)]
    return float(np.mean(diff**2))


def psnr_of(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    return psnr_of(mse(a, b, where))


def kept_iou(result: np.ndarray, edit: Edit, resolution: int) -> list[float]:
    """Per unedited shape: IoU of its source mask and the object the classifier finds nearest to it."""
    objects = detect(result).objects
    out = []
    for shape in edit.kept_shapes:
        truth = Scene((shape,)).masks(resolution)[0] >= 0.5
        near = nearest_object(objects, shape)
        if near is None:
            out.append(0.0)
            continue
        found = near.mask >= 0.5
        out.append(float((truth & found).sum() / max((truth | found).sum(), 1)))
    return out


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# --- the benchmark ---------------------------------------------------------------------------------


def edit_region(image: np.ndarray, edit: Edit, resolution: int) -> np.ndarray:
    """Where the edit may change ``image``'s pixels: the ground truth's region and the object ``image`` drew for
    the edited shape (``edited_object``): captions fix neither an object's size nor an added object's place, so
    an added shape's region is where it did appear (the ground truth's if it did not)."""
    region = edit.region(resolution, 0)
    drawn = edited_object(image, edit)
    if drawn is None:
        return region
    return drawn.mask > 0 if edit.kind == "add" else region | (drawn.mask > 0)


def success(image: np.ndarray, edit: Edit) -> bool:
    """The classifier's verdict: the edited shape as the target has it, or the target's background."""
    if edit.kind == "background":
        return detect(image).background == edit.target.background
    return edit_success(image, edit)


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
        oracle = [torch.from_numpy(e.region(res, MASK_DILATE))[None, None] for e in chunk]
        inversions: dict[str, Inverted] = {}
        for name in methods:
            method = METHODS[name]
            params = [engine.params(e.source_prompt, strength, method.inversion) for e in chunk]
            key = json.dumps(method.inversion, sort_keys=True)
            if key not in inversions:
                inversions[key] = engine.invert(z0, params)
                if reconstruct:  # once per inversion, reported on the first row that uses it
                    recons, _ = engine.regenerate(inversions[key], [None] * len(chunk))
                    exact = all(torch.equal(r.z0, z) for r, z in zip(recons, z0, strict=True))
                    if params[0].fixed_point and not exact:
                        raise AssertionError(f"{name}: the reconstruction is not bit-exact (batch layouts differ?)")
                    errors = [float((r.z0 - z).abs().max()) for r, z in zip(recons, z0, strict=True)]
                    add(name, "latent_error", errors)
                    add(
                        name, "recon_psnr", [psnr(np.asarray(r.image), s) for r, s in zip(recons, sources, strict=True)]
                    )
            inv = inversions[key]
            given = {} if engine.edit_guidance is None else {"guidance_scale": engine.edit_guidance}
            edit = EditParams(**{**given, **method.edit})
            edited, seconds = engine.regenerate(
                inv, [e.prompt for e in chunk], oracle if method.oracle else None, method.gamma, edit
            )
            results = [np.asarray(r.image) for r in edited]
            truths = [edit_region(r, e, res) for r, e in zip(results, chunk, strict=True)]
            regions = [grow(t, MASK_DILATE) for t in truths]
            backgrounds = [mse(r, s, ~g) for r, s, g in zip(results, sources, regions, strict=True)]
            for r, z, e, truth, region, background in zip(edited, z0, chunk, truths, regions, backgrounds, strict=True):
                local = e.kind in EDIT_KINDS
                if r.mask is None:
                    add(name, "masked", [False])
                    continue
                m = r.mask.to(z.device)
                add(name, "masked", [True])
                identical = bool(torch.equal(torch.where(m, z, r.z0), z))
                add(name, "identical", [identical])
                add(name, "identical_local", [identical] if local else [])
                add(name, "background_identical_local", [background == 0] if local else [])
                found = m[0, 0].cpu().numpy()
                add(name, "mask_iou", [float((found & truth).sum() / max((found | truth).sum(), 1))])
                add(name, "leakage", [float((found & ~region).sum() / max(found.sum(), 1))])
                add(name, "mask_fraction", [float(found.mean())])
            add(name, "success", [success(r, e) for r, e in zip(results, chunk, strict=True)])
            add(name, "background_mse", backgrounds)
            add(name, "target_psnr", [psnr(r, t) for r, t in zip(results, targets, strict=True)])
            add(name, "kept_iou", [v for r, e in zip(results, chunk, strict=True) for v in kept_iou(r, e, res)])
            add(name, "nfe", [i.nfe + r.nfe for i, r in zip(inv.inversions, edited, strict=True)])
            add(name, "seconds", [(inv.seconds + seconds) / len(chunk)] * len(chunk))
            add(name, "edit_seconds", [seconds / len(chunk)] * len(chunk))
            add(name, "kind", [e.kind for e in chunk])
    return {name: summarise(values) for name, values in acc.items()}


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


def summarise(values: dict[str, list]) -> dict:
    out = {
        "edit_success": mean(values["success"]),
        "background_psnr": psnr_of(mean(values["background_mse"])),
        "background_identical": mean([m == 0 for m in values["background_mse"]]),
        "target_psnr": mean(values["target_psnr"]),
        "kept_iou": mean(values["kept_iou"]),
        "nfe": mean(values["nfe"]),
        "seconds_per_edit": mean(values["seconds"]),
        "edit_seconds": mean(values["edit_seconds"]),
        "masked": mean(values["masked"]),
        "success_by_kind": {
            k: mean([s for s, kk in zip(values["success"], values["kind"], strict=True) if kk == k])
            for k in dict.fromkeys(values["kind"])
        },
    }
    for key in ("identical", "identical_local", "background_identical_local", "mask_iou", "leakage", "mask_fraction"):
        out[key] = mean(values.get(key, []))
    if "recon_psnr" in values:
        out["recon_psnr"] = mean(values["recon_psnr"])
        out["latent_error"] = max(values["latent_error"])
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


def cost(engine: Engine, edits: Sequence[Edit], strength: float, n: int) -> dict:
    """Wall time of the default edit against the plain exact regeneration (γ = 1, no control, no mask: the edit
    as it was), one edit at a time on the same inversion, alternating which runs first."""
    res = engine.model.height
    plain, default = [], []
    for i, e in enumerate(edits[:n]):
        z0 = imaging.to_tensor(imaging.load_image(_pil(e.source.render(res)))).double()
        inv = engine.invert([z0], [engine.params(e.source_prompt, strength, BDIA_EXACT)])
        runs = [(plain, EditParams(**PLAIN), 1.0), (default, EditParams(), None)]
        for times, edit, gamma in runs[:: -1 if i % 2 else 1]:
            times.append(engine.regenerate(inv, [e.prompt], None, gamma, edit)[1])
    return {
        "edits": len(plain),
        "plain_seconds": mean(plain),
        "default_seconds": mean(default),
        "ratio": sum(default) / sum(plain),
        "median_ratio": float(np.median([d / p for d, p in zip(default, plain, strict=True)])),
    }


def fmt(x: float, digits: int = 1) -> str:
    return "inf" if x == math.inf else f"{x:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| method | edit success | background PSNR | background identical (blended local) | outside mask = source "
        "(local) | mask IoU | leakage | PSNR to target | NFE | s / edit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda x: "–" if math.isnan(x) else f"{x:.0%}"  # noqa: E731
    num = lambda x, d=2: "–" if math.isnan(x) else f"{x:.{d}f}"  # noqa: E731
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['edit_success']:.0%} | {fmt(r['background_psnr'])} | {pct(r['background_identical'])} "
            f"({pct(r['background_identical_local'])}) | "
            f"{pct(r['identical'])} ({pct(r['identical_local'])}) | {num(r['mask_iou'])} | {num(r['leakage'])} | "
            f"{fmt(r['target_psnr'])} | {r['nfe']:.0f} | {r['edit_seconds']:.2f} |"
        )
    return "\n".join(lines)


def kind_table(rows: dict[str, dict]) -> str:
    """Edit success per method and edit kind."""
    kinds = list(dict.fromkeys(k for r in rows.values() for k in r["success_by_kind"]))
    lines = ["| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['success_by_kind'].get(k, math.nan):.0%}" for k in kinds) + " |")
    return "\n".join(lines)


def sweep(
    model: DiffusionModel,
    edits: Sequence[Edit],
    steps: int,
    guidance: float,
    edit_guidances: Sequence[float],
    strengths: Sequence[float],
    methods: Sequence[str],
    batch: int,
) -> list[dict]:
    """Edit success and background PSNR per (edit guidance, strength) for ``methods`` (no reconstructions)."""
    out = []
    for g in edit_guidances:
        engine = Engine(model, steps, guidance, g)
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
    parser.add_argument("--n", type=int, default=200, help="benchmark scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--strength", type=float, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=None, help="the inversion's (default: the model's)")
    parser.add_argument(
        "--edit-guidance", type=float, default=None, help="the edits' (default: the model's edit default)"
    )
    parser.add_argument("--kinds", default=",".join(ALL_KINDS), help="comma-separated edit kinds, taken in turn")
    parser.add_argument("--batch", type=int, default=50, help="scenes per network call")
    parser.add_argument("--samples", type=int, default=100, help="prompts for the sample-accuracy figure (0: skip)")
    parser.add_argument("--validate", type=int, default=200, help="ground-truth scenes for the classifier check")
    parser.add_argument("--methods", default=None, help="comma-separated rows (default: all; sweep: DDIM and exact)")
    parser.add_argument("--sweep", action="store_true", help="only the guidance × strength sweep")
    parser.add_argument("--sweep-guidance", default="2,4,6", help="edit guidance values")
    parser.add_argument("--sweep-strength", default="0.6,0.8,1.0")
    parser.add_argument("--cost", type=int, default=0, help="edits timed one at a time, default vs plain (0: skip)")
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
    defaults = model.defaults.inversion(steps=args.steps, strength=args.strength, guidance_scale=args.guidance)
    args.steps, args.strength, args.guidance = defaults["steps"], defaults["strength"], defaults["guidance_scale"]
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    if unknown_kinds := set(kinds) - set(ALL_KINDS):
        parser.error(f"unknown kinds {sorted(unknown_kinds)}; choose from {list(ALL_KINDS)}")
    edits = edit_benchmark(args.n, args.seed, kinds=kinds)
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
            model,
            edits,
            args.steps,
            args.guidance,
            floats(args.sweep_guidance),
            floats(args.sweep_strength),
            methods,
            args.batch,
        )
        report["sweep"] = rows
        lines += [
            f"Edit guidance × strength sweep, {args.n} scenes, {args.steps} steps, inversion guidance "
            f"{args.guidance:g}:",
            "",
            "| edit guidance | strength | method | edit success | background PSNR | PSNR to target | kept IoU |",
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
        engine = Engine(model, args.steps, args.guidance, args.edit_guidance)
        if args.samples:
            started = time.perf_counter()
            acc = sample_accuracy(engine, args.samples, args.batch)
            report["samples"] = acc
            lines += [
                f"Samples (the model's sampling defaults: {model.defaults.sampling()}) showing their prompt's "
                f"colours and shapes: {acc['prompt_accuracy']:.0%} of {acc['prompts']} prompts "
                f"(objects {acc['object_accuracy']:.0%}; bar ≥ 80%) [{time.perf_counter() - started:.0f} s]",
                "",
            ]
        rows = evaluate(engine, edits, args.strength, methods, args.batch)
        report["methods"] = rows
        levels = InversionParams(model=model.name, steps=args.steps, strength=args.strength).levels
        settings = model.defaults.edit.model_dump(include=model.defaults.edit.model_fields_set)
        edit_settings = ", ".join(f"{k} {v}" for k, v in settings.items())
        if args.edit_guidance is not None:
            edit_settings += f"; guidance_scale {args.edit_guidance:g} in this run"
        lines += [
            f"Shapes-Edit: {args.n} edits ({', '.join(dict.fromkeys(e.kind for e in edits))}), model "
            f"{model.name}, {args.steps} steps, strength {args.strength:g} ({levels} levels), inversion guidance "
            f"{args.guidance:g}; edits at the model's edit settings ({edit_settings}) where a row does not say; "
            f"mask and background = edit region +{MASK_DILATE} px, {torch.get_num_threads()} CPU thread(s), "
            f"{args.batch} scenes per call.",
            "",
            table(rows),
            "",
            "Edit success by kind:",
            "",
            kind_table(rows),
            "",
        ]
        recon = [
            f"{name} latent error {r['latent_error']:.1e}, PSNR {fmt(r['recon_psnr'])} dB"
            for name, r in rows.items()
            if "recon_psnr" in r
        ]
        if recon:
            lines.append("Reconstructions (the source prompt) per inversion: " + "; ".join(recon) + ".")
        if {DEFAULT_ROW, "DDIM + P2P + blend"} <= rows.keys():
            new, p2p = rows[DEFAULT_ROW], rows["DDIM + P2P + blend"]
            lines.append(
                f"Targets: default edit success {new['edit_success']:.0%} (≥ 75%: "
                f"{'met' if new['edit_success'] >= 0.75 else 'missed'}; DDIM + P2P + blend "
                f"{p2p['edit_success']:.0%}); background PSNR {fmt(new['background_psnr'])} vs "
                f"{fmt(p2p['background_psnr'])} dB; background identical on the blended local edits "
                f"{new['background_identical_local']:.0%} (≥ 95%; DDIM + P2P + blend "
                f"{p2p['background_identical_local']:.0%}); outside its mask = the source on every blended local "
                f"edit: {new['identical_local']:.0%}."
            )
        if args.cost:
            c = cost(engine, edits, args.strength, args.cost)
            report["cost"] = c
            lines += [
                "",
                f"Cost, {c['edits']} edits one at a time: the default edit {c['default_seconds']:.2f} s against "
                f"{c['plain_seconds']:.2f} s for the plain exact regeneration: {c['ratio']:.2f}× in total "
                f"(median {c['median_ratio']:.2f}×; bar ≤ 1.6×).",
            ]
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
