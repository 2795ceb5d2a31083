"""Sample quality of the bundled ``shapes`` model per sampler setting (docs/benchmarks.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sample_quality.py [--n 64] [--seeds 1]
        [--steps 10,20,50] [--guidance 2,4,7.5] [--gamma 0,0.5,1] [--schedule model,leading]
        [--forms caption,short] [--model shapes] [--json]

Prompts come from the scene grammar (held-out stream): ``caption`` is a scene's full caption
("a red circle and a blue square on a grey background"), ``short`` names its shapes only ("a red
circle and a blue square", the form of the README's "a red circle"). Every setting samples every
prompt from the same noise with the engine's own sampler (``bdia.ops.sampling``: BDIA with the
given γ; γ = 0 is plain DDIM), B prompts side by side in one network call per step. ``--schedule``
picks the scheduler: the model's own, or the training schedule with a timestep spacing, cut after a
top timestep (``leading`` is the 1000-level schedule the model shipped with first; ``trailing@900``
its current one).

Columns (per prompt form): ``accuracy`` = the classifier finds exactly the prompt's objects (count,
colour and kind of each); ``clean`` = accurate, and the background is flat (RMS of the pixels
outside the objects about the fitted background plane ≤ ``NOISE_MAX`` levels) with no colour cast
(its colour within ``CAST_MAX`` levels of a palette background) and, for captions, the named one
(``background``: the classifier reads the caption's background). ``noise`` and ``cast`` are the
means of those two measures, in 8-bit levels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level shapes folder

import numpy as np
import torch

import bdia
from bdia.batching import Layout, drive_together
from bdia.models import DiffusionModel
from bdia.ops import sampling
from shapes.classifier import _BACKGROUND_PALETTE, _background, _grow, compare
from shapes.scenes import Scene, random_scene, scene_rng
from shapes.train import sampling_scheduler_config, short_caption

PROMPT_STREAM = 3  # scene stream of the prompts (training uses 0, the self-check 2, Shapes-Edit 1)
NOISE_MAX = 8.0  # largest background RMS (8-bit levels) of a clean sample
CAST_MAX = 24.0  # largest distance of the background's colour from a palette background
FORMS = ("caption", "short")


def prompt_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` held-out scenes (1 or 2 shapes, every background)."""
    return [random_scene(scene_rng(seed, i, PROMPT_STREAM)) for i in range(n)]


def background_quality(image: np.ndarray, objects) -> tuple[float, float]:
    """(noise, cast) of an (H, W, 3) uint8 image: the background pixels' RMS about the fitted background
    plane, and the distance of the background's mean colour from the nearest palette background."""
    pixels = image.astype(np.float32)
    plane = _background(pixels)
    covered = np.zeros(image.shape[:2], dtype=bool)
    for o in objects:
        covered |= _grow(_grow(o.mask > 0.05))
    free = ~covered if (~covered).sum() >= 16 else np.ones_like(covered)
    noise = float(np.sqrt(np.mean((pixels - plane)[free] ** 2)))
    colour = pixels[free].mean(axis=0)
    cast = float(np.linalg.norm(_BACKGROUND_PALETTE - colour, axis=1).min())
    return noise, cast


def judge(image: np.ndarray, scene: Scene, form: str) -> dict:
    """The classifier's verdict on one sample of ``scene``'s prompt in ``form``."""
    result = compare(image, scene, by_position=False)
    noise, cast = background_quality(image, result["detection"].objects)
    background_ok = result["background_ok"] if form == "caption" else True
    ok = bool(result["ok"])
    return {
        "ok": ok,
        "background_ok": bool(result["background_ok"]),
        "clean": ok and background_ok and noise <= NOISE_MAX and cast <= CAST_MAX,
        "noise": noise,
        "cast": cast,
        "shapes": len(scene.shapes),
    }


def with_schedule(model: DiffusionModel, schedule: str) -> DiffusionModel:
    """``model`` sampling with ``schedule``: ``model`` (its own scheduler), or ``SPACING`` / ``SPACING@TOP``:
    the training schedule (``shapes.train``) with that timestep spacing, cut after timestep TOP."""
    if schedule == "model":
        return model
    from diffusers import DDIMScheduler

    spacing, _, top = schedule.partition("@")
    config = sampling_scheduler_config(int(top) if top else 999, spacing, model.prediction_type)
    return dataclasses.replace(model, scheduler=DDIMScheduler.from_config(config))


def sample_images(
    model: DiffusionModel, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, gamma: float
) -> list[np.ndarray]:
    """The engine's samples of ``prompts`` (seed b for prompt b), side by side in ``Layout(B, b)``."""
    batch = len(prompts)
    jobs = [
        sampling(model, p, seed=s, steps=steps, gamma=gamma, guidance_scale=guidance, layout=Layout(batch, b))
        for b, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]
    return [np.asarray(sample.image) for sample in drive_together(model, jobs)]


@dataclasses.dataclass(frozen=True)
class Setting:
    schedule: str
    steps: int
    guidance: float
    gamma: float

    @property
    def label(self) -> str:
        return f"{self.schedule} | {self.steps} | {self.guidance:g} | {self.gamma:g}"


def save_grid(images: Sequence[np.ndarray], path: Path, cols: int = 8, scale: int = 4) -> None:
    """``images`` as one PNG grid (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    blank = np.zeros_like(images[0])
    rows = [list(images[i : i + cols]) for i in range(0, len(images), cols)]
    rows[-1] += [blank] * (cols - len(rows[-1]))
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def evaluate(
    model: DiffusionModel,
    setting: Setting,
    scenes: Sequence[Scene],
    forms: Sequence[str],
    seeds: int,
    batch: int,
    save: Path | None = None,
) -> dict[str, dict]:
    """Per prompt form: accuracy, clean share, mean noise and cast over ``scenes`` × ``seeds`` (with ``save``:
    the first seed's samples as a PNG grid per form there)."""
    local = with_schedule(model, setting.schedule)
    out: dict[str, dict] = {}
    for form in forms:
        prompts = [s.caption if form == "caption" else short_caption(s) for s in scenes]
        verdicts, shown = [], []
        for seed in range(seeds):
            for first in range(0, len(prompts), batch):
                chunk = prompts[first : first + batch]
                noise_seeds = [seed * 100_003 + first + b for b in range(len(chunk))]
                images = sample_images(local, chunk, noise_seeds, setting.steps, setting.guidance, setting.gamma)
                shown += images if seed == 0 else []
                verdicts += [
                    judge(img, sc, form) for img, sc in zip(images, scenes[first : first + batch], strict=True)
                ]
        if save is not None:
            name = f"{form}_{setting.schedule}_{setting.steps}_g{setting.guidance:g}_gamma{setting.gamma:g}.png"
            save_grid(shown, save / name)
        one = [v for v in verdicts if v["shapes"] == 1]
        out[form] = {
            "samples": len(verdicts),
            "accuracy": float(np.mean([v["ok"] for v in verdicts])),
            "accuracy_one_shape": float(np.mean([v["ok"] for v in one])) if one else float("nan"),
            "background": float(np.mean([v["background_ok"] for v in verdicts])) if form == "caption" else None,
            "clean": float(np.mean([v["clean"] for v in verdicts])),
            "noise": float(np.mean([v["noise"] for v in verdicts])),
            "cast": float(np.mean([v["cast"] for v in verdicts])),
        }
    return out


@torch.no_grad()
def level_errors(
    model: DiffusionModel, scenes: Sequence[Scene], timesteps: Sequence[int], guidance: float
) -> list[dict]:
    """Per training timestep t: how well the network recovers x₀ from x_t = α·x₀ + σ·ε of the scenes' renders
    (under their captions), in 8-bit levels: the RMS error of x̂₀ clamped to the image range, and the mean
    absolute error of x̂₀'s per-channel mean (the image's overall colour), unguided and at ``guidance``."""
    from diffusers import DDIMScheduler

    alphas = DDIMScheduler(**sampling_scheduler_config(999, prediction_type=model.prediction_type)).alphas_cumprod
    x0 = torch.from_numpy(np.stack([s.render(model.height) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = model.encode_prompt([s.caption for s in scenes])
    uncond = model.encode_prompt([""]).expand(len(scenes), -1, -1)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for t in timesteps:
        a = alphas[t].double()
        noise = torch.randn(x0.shape, generator=generator)
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
        out = model.predict(torch.cat([xt, xt]), t, torch.cat([uncond, cond])).double()
        if model.prediction_type == "v_prediction":
            out = a.sqrt() * out + (1 - a).sqrt() * torch.cat([xt, xt]).double()
        eps_u, eps_c = out.chunk(2)
        row = {"t": t, "alpha": float(a.sqrt()), "sigma_over_alpha": float(((1 - a) / a).sqrt())}
        for name, eps in (("unguided", eps_c), (f"guidance {guidance:g}", eps_u + guidance * (eps_c - eps_u))):
            x0_hat = (xt - (1 - a).sqrt() * eps) / a.sqrt()
            row[name] = {
                "x0_rms": float(((x0_hat.clamp(-1, 1) - x0) ** 2).mean().sqrt() * 127.5),
                "mean_colour": float((x0_hat.mean((2, 3)) - x0.mean((2, 3))).abs().mean() * 127.5),
            }
        rows.append(row)
    return rows


def level_table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k not in ("t", "alpha", "sigma_over_alpha")]
    head = "| t | α | σ/α |" + "".join(f" x̂₀ RMS error, {n} | mean-colour error, {n} |" for n in names)
    lines = [head, "|---|---|---|" + "---|---|" * len(names)]
    for r in rows:
        line = f"| {r['t']} | {r['alpha']:.3g} | {r['sigma_over_alpha']:.3g} |"
        line += "".join(f" {r[n]['x0_rms']:.1f} | {r[n]['mean_colour']:.3g} |" for n in names)
        lines.append(line)
    return "\n".join(lines)


def table(rows: list[tuple[Setting, dict]], forms: Sequence[str]) -> str:
    head = "| schedule | steps | guidance | γ |"
    rule = "|---|---|---|---|"
    for form in forms:
        head += f" {form}: accuracy | one shape |" + (" background |" if form == "caption" else "")
        head += " clean | noise | cast |"
        rule += "---|---|---|---|---|" + ("---|" if form == "caption" else "")
    lines = [head, rule]
    for setting, result in rows:
        line = f"| {setting.label} |"
        for form in forms:
            r = result[form]
            line += f" {r['accuracy']:.0%} | {r['accuracy_one_shape']:.0%} |"
            line += f" {r['background']:.0%} |" if form == "caption" else ""
            line += f" {r['clean']:.0%} | {r['noise']:.1f} | {r['cast']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=64, help="prompts per form")
    parser.add_argument("--seeds", type=int, default=1, help="noise seeds per prompt")
    parser.add_argument("--steps", default="10,20,50")
    parser.add_argument("--guidance", default="2,4,7.5")
    parser.add_argument("--gamma", default="0,1")
    parser.add_argument(
        "--schedule",
        default="model",
        help="comma-separated: model (its own scheduler), or SPACING[@TOP] (training schedule, spacing, cut at TOP)",
    )
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--batch", type=int, default=64, help="prompts per network call")
    parser.add_argument("--save", type=Path, default=None, help="folder for a PNG grid of samples per setting")
    parser.add_argument(
        "--levels", default=None, help="instead: x̂₀ errors at these training timesteps (e.g. 101,501,901,981,999)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + ".venv/bin/python benchmarks/sample_quality.py "
    command += shlex.join(sys.argv[1:] if argv is None else list(argv))
    forms = [f for f in args.forms.split(",") if f]
    if set(forms) - set(FORMS):
        parser.error(f"forms are {FORMS}")
    model = bdia.load_model(args.model)
    if not model.pixel_space:
        parser.error("the benchmark classifies pixels: it needs a pixel-space model such as shapes")
    schedules = args.schedule.split(",")
    scenes = prompt_scenes(args.n)
    if args.levels:
        guidance = floats(args.guidance)[-1]
        rows = level_errors(model, scenes, [int(t) for t in args.levels.split(",")], guidance)
        text = level_table(rows)
        echo(f"`{command}`\n\n{args.n} held-out scenes, 8-bit levels, guidance {guidance:g}:\n\n{text}")
        return {"command": command, "levels": rows, "markdown": text}
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[Setting, dict]] = []
    echo(f"`{command}`\n")
    for schedule in schedules:
        for steps in [int(s) for s in args.steps.split(",")]:
            for guidance in floats(args.guidance):
                for gamma in floats(args.gamma):
                    setting = Setting(schedule, steps, guidance, gamma)
                    started = time.perf_counter()
                    result = evaluate(model, setting, scenes, forms, args.seeds, args.batch, args.save)
                    rows.append((setting, result))
                    if args.json:
                        echo(json.dumps({"setting": dataclasses.asdict(setting), "result": result}))
                    else:
                        brief = ", ".join(f"{f} {result[f]['accuracy']:.0%}/{result[f]['clean']:.0%}" for f in forms)
                        echo(f"{setting.label}: {brief} [{time.perf_counter() - started:.0f} s]")
    text = table(rows, forms)
    echo(
        f"\n{args.n} prompts per form × {args.seeds} seed(s), model {model.name}, "
        f"{torch.get_num_threads()} CPU thread(s). accuracy/clean as defined in the script.\n\n{text}"
    )
    return {"command": command, "rows": [(dataclasses.asdict(s), r) for s, r in rows], "markdown": text}


if __name__ == "__main__":
    main()
