"""GPU benchmark of the engine with an SD-1.5- or SDXL-sized model (docs/benchmarks.md). A script, for a CUDA machine:

    python benchmarks/gpu.py [--family sd15|sdxl] [--model PATH] [--steps 50] [--determinism on|off|both]
                             [--budget-s SECONDS] [--out gpu.json]
    python benchmarks/gpu.py --tiny [--family sdxl]   # the tiny random model, a few steps: runs anywhere

Without ``--model`` the networks are built from the family's configurations with random weights, on the
device, fp16 on CUDA: ``sd15`` (UNet2DConditionModel, a CLIP text encoder of SD 1.5's size over the
byte-level tokenizer, the SD AutoencoderKL; 512 px) or ``sdxl`` (SDXL base's UNet, CLIP ViT-L and OpenCLIP
bigG-sized text encoders, SDXL's VAE with ``force_upcast``; 1024 px), assembled as a diffusers pipeline and
made a model by ``DiffusionModel.from_pipeline`` (the engine's SDXL path). Measures, in one run:

1. the UNet-only floor: one network call per NFE in the job's layout (1 row unguided, 2 guided);
2. an uncached edit end to end at the native size: VAE encode, N-step inversion, N−1-step guided edit,
   VAE decode, against the floor for its NFE;
3. a cached edit (the latent pair read back from its bytes, then the edit);
4. round trips of the recovered latent (sd15: DDIM, EDICT, BDIA float32 / float64 / fixed point; sdxl:
   BDIA fixed point), in exact mode only;
5. batched throughput of invert+edit jobs with continuous batching at B = 1, 4, 8 (max(--jobs, B) jobs).

The edit is a plain guided regeneration under the edit prompt (no attention control, no blending), so its
NFE are the floor's. ``--determinism``: ``on`` (the default) measures with exact-mode numerics (deterministic
algorithms, no TF32, no cuDNN autotuning: ``numerics.configure_determinism``); ``off`` with PyTorch's fast
settings (nondeterministic algorithms allowed, TF32 on, cuDNN autotuning on); ``both`` measures 1, 2 and 5
in each, interleaved in this process, and reports exact mode's cost as the ratio of times (on / off).
``CUBLAS_WORKSPACE_CONFIG`` is read once per process, so it stays ``:4096:8`` in both.

``--budget-s``: the run skips each section whose estimated time no longer fits (recording it under
``skipped``) and stops one that overruns, so the JSON is always written in time. The JSON (with the
markdown table under ``markdown``) and ``<out>.md`` are rewritten after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before the first CUDA matmul (docs/numerics.md#determinism).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import bdia
from bdia import imaging, numerics
from bdia.batching import Job, Lane, Layout, Request, advance, conditioning, evaluate
from bdia.families import SDXL_SCHEDULER
from bdia.inversion import Inversion
from bdia.models import SD15_SCHEDULER, DiffusionModel, _assemble
from bdia.ops import inverting, regenerating
from bdia.params import EditParams, InversionParams
from bdia.sampling import Progress

SOURCE = "a red circle and a blue square on a grey background"
EDIT = "a green circle and a blue square on a grey background"
PLAIN = EditParams.create(control="none", mask_mode="none")
"""The edit measured: a plain guided regeneration under the edit prompt (no attention control, no blending),
so its NFE are the floor's (N−1 calls of 2 rows) and the inversion need not keep its trajectory."""
RESERVE_S = 3.0
"""Seconds of ``--budget-s`` kept for writing the results."""

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # six time ids × 256 + the pooled bigG text embedding 1280
    "norm_num_groups": 32,
}
"""stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the keys that differ from diffusers' defaults)."""


def _text_config(hidden: int, layers: int, heads: int, act: str, projection: int) -> Any:
    from transformers import CLIPTextConfig

    from bdia.tokenizer import VOCAB_SIZE

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def sd15_random(device: torch.device, dtype: torch.dtype, seed: int = 0) -> DiffusionModel:
    """SD 1.5's architecture with random weights, built from its configurations on ``device``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from bdia.tokenizer import byte_level_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(_text_config(768, 12, 12, "quick_gelu", 768))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
    for module in (unet, text_encoder, vae):
        torch.nn.Module.to(module, dtype=dtype)
    scheduler = DDIMScheduler(**SD15_SCHEDULER, prediction_type="epsilon")
    return _assemble("sd15-random", unet, text_encoder, byte_level_tokenizer(), vae, scheduler, device, dtype)


def sdxl_random(device: torch.device, dtype: torch.dtype, seed: int = 0) -> DiffusionModel:
    """SDXL base's architecture with random weights (2.6 B-parameter UNet), built on ``device`` (in float32,
    then cast: seconds on a GPU) as a StableDiffusionXLPipeline and made a model the engine's SDXL way."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET)
        text_encoder = CLIPTextModel(_text_config(768, 12, 12, "quick_gelu", 768))  # CLIP ViT-L
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(1280, 32, 20, "gelu", 1280))  # OpenCLIP bigG
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            sample_size=1024,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025,
            force_upcast=True,
        )
    for module in (unet, text_encoder, text_encoder_2, vae):
        torch.nn.Module.to(module, dtype=dtype)
    return sdxl_model(unet, text_encoder, text_encoder_2, vae, "sdxl-random")


def sdxl_model(unet: Any, text_encoder: Any, text_encoder_2: Any, vae: Any, name: str) -> DiffusionModel:
    """A model over SDXL networks through the engine's SDXL path (a pipeline, ``DiffusionModel.from_pipeline``)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from bdia.tokenizer import byte_level_tokenizer

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=byte_level_tokenizer(),
        tokenizer_2=byte_level_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return DiffusionModel.from_pipeline(pipe, name=name)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """The model the flags ask for."""
    if args.model:
        return bdia.load_model(args.model, device=device, dtype=dtype)
    if args.tiny and args.family == "sdxl":
        from bdia.families import tiny_sdxl_pipeline

        pipe = tiny_sdxl_pipeline().to(device=device, dtype=dtype)  # its networks, assembled as the full run's
        return sdxl_model(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae, "tiny-sdxl")
    if args.tiny:
        return bdia.load_model("tiny-random", device=device, dtype=dtype)
    return (sdxl_random if args.family == "sdxl" else sd15_random)(device, dtype)


def set_determinism(device: torch.device, exact: bool) -> None:
    """Exact-mode numerics (``numerics.configure_determinism``) or PyTorch's fast settings, process-wide."""
    if exact:
        numerics.configure_determinism(device)
        return
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def sync(model: DiffusionModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def timed(model: DiffusionModel, fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """The best wall time of ``repeats`` calls (synchronised), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(model)
        started = time.perf_counter()
        result = fn()
        sync(model)
        best = min(best, time.perf_counter() - started)
    return best, result


def unet_floor(model: DiffusionModel, steps: int, guided: bool, calls: int) -> float:
    """Seconds per network call (prompt encoding excluded) for one job alone: 1 row, or 2 with guidance."""
    grid = model.level_grid(steps)
    cond = conditioning(model, grid, EDIT, 7.5 if guided else 1.0)
    z = torch.randn((1, *model.latent_shape), device=model.device, dtype=torch.float64)
    request = Request(z, grid.steps // 2, cond, Layout(), Progress(1, 1, "floor"))
    (eps,) = evaluate(model, [request])
    if not bool(torch.isfinite(eps).all()):  # random fp16 weights that overflow would make every figure moot
        raise FloatingPointError(f"ε̂ of {model.name} is not finite ({'2 rows' if guided else '1 row'})")
    seconds, _ = timed(model, lambda: [evaluate(model, [request]) for _ in range(calls)], repeats=2)
    return seconds / calls


def edit_job(
    model: DiffusionModel, z0: torch.Tensor, params: InversionParams, guidance: float, layout: Layout
) -> Job[Any]:
    """An uncached edit as one job: invert, then edit under the edit prompt, in ``layout``."""
    inversion = yield from inverting(model, z0, params, layout=layout, keep_trajectory=False)
    return (yield from regenerating(model, inversion, EDIT, guidance_scale=guidance, edit=PLAIN, layout=layout))


def uncached_edit(model: DiffusionModel, picture: Any, params: InversionParams, guidance: float) -> tuple[Any, Any]:
    """An uncached edit end to end: VAE encode, inversion, the plain edit, VAE decode; (inversion, result)."""
    inversion = bdia.invert_latent(model, imaging.encode(model, picture), params, keep_trajectory=False)
    return inversion, bdia.regenerate(model, inversion, EDIT, guidance_scale=guidance, edit=PLAIN)


def throughput(
    model: DiffusionModel, z0: torch.Tensor, params: InversionParams, guidance: float, batch_size: int, jobs: int
) -> float:
    """Jobs per second with continuous batching: up to ``batch_size`` lanes, each freed slot refilled at once."""
    queue, lanes = list(range(jobs)), {}
    sync(model)
    started = time.perf_counter()
    while queue or lanes:
        for slot in range(batch_size):
            if slot not in lanes and queue:
                queue.pop()
                lanes[slot] = Lane(edit_job(model, z0, params, guidance, Layout(batch_size, slot)))
        advance(model, list(lanes.values()))
        for slot, lane in list(lanes.items()):
            if lane.error is not None:
                raise lane.error
            if lane.done:
                del lanes[slot]
    sync(model)
    return jobs / (time.perf_counter() - started)


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere), so ``--budget-s`` counts the imports."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks after boot
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


class BudgetSpent(Exception):
    """Raised (by an alarm) when ``--budget-s`` less the reserve for writing has run out."""


def _alarm(signum: int, frame: Any) -> None:
    raise BudgetSpent


class Recorder:
    """The report, its table and its time budget; ``section`` runs one measurement and saves everything."""

    def __init__(self, out: Path, budget_s: float | None, started: float) -> None:
        self.out, self.budget_s, self.started = out, budget_s, started
        self.report: dict[str, Any] = {"skipped": [], "complete": False}
        self.rows: list[tuple[str, str]] = []
        self.header = ""
        self.stopped = False
        self.armed = budget_s is not None and hasattr(signal, "setitimer")
        if self.armed:
            self.handler = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, max(0.1, budget_s - RESERVE_S))  # type: ignore[operator]

    def disarm(self) -> None:
        """Cancel the budget's alarm and put the previous SIGALRM handler back."""
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.handler)
            self.armed = False

    def left(self) -> float:
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - RESERVE_S - (time.perf_counter() - self.started)

    def section(self, name: str, estimate_s: float, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None when it is skipped (its estimate does not fit) or stopped by the budget."""
        left = self.left()
        if self.stopped or estimate_s > left:
            why = "budget spent" if self.stopped else f"estimated {estimate_s:.0f} s, {max(left, 0):.0f} s left"
            self.report["skipped"].append({"section": name, "reason": why})
            print(f"skipped {name}: {why}", flush=True)
            self.save()
            return None
        try:
            result = fn()
        except BudgetSpent:
            self.stopped = True
            self.report["skipped"].append({"section": name, "reason": "stopped: budget spent"})
            print(f"stopped {name}: budget spent", flush=True)
            result = None
        except Exception as exc:  # one failed section (e.g. out of memory) must not lose the others
            traceback.print_exc()
            self.report["skipped"].append({"section": name, "reason": f"failed: {type(exc).__name__}: {exc}"[:500]})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            result = None
        self.save()
        return result

    def markdown(self) -> str:
        lines = [self.header, "", "| measure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows]
        lines += [f"| skipped: {s['section']} | {s['reason']} |" for s in self.report["skipped"]]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        self.report["seconds"] = time.perf_counter() - self.started
        self.report["markdown"] = self.markdown()
        self.out.write_text(json.dumps(self.report, indent=2))
        self.out.with_suffix(".md").write_text(self.report["markdown"])

    def close(self) -> None:
        self.disarm()
        self.report["complete"] = not self.report["skipped"]
        self.save()


ROUNDTRIP_MODES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sd15": [
        ("ddim", {"method": "ddim", "exact": False, "state_dtype": "float64"}),
        ("edict", {"method": "edict", "exact": False, "state_dtype": "float32"}),
        ("bdia float32", {"method": "bdia", "exact": False, "state_dtype": "float32"}),
        ("bdia float64", {"method": "bdia", "exact": False, "state_dtype": "float64"}),
        ("bdia fixed point", {"method": "bdia", "exact": True}),
    ],
    "sdxl": [("bdia fixed point", {"method": "bdia", "exact": True})],
}


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """Run the benchmark (``started``: the ``perf_counter`` the budget counts from; default now)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="the random architecture")
    parser.add_argument("--model", help="a diffusers folder or hub id (real weights); default: random weights")
    parser.add_argument("--tiny", action="store_true", help="the family's tiny random model and few steps (smoke)")
    parser.add_argument("--steps", type=int, help="N (default 50; 4 with --tiny)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="of the edit (inversion: 1)")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument(
        "--jobs", type=int, help="jobs per throughput measurement, at least B (default 8; 1 with --tiny)"
    )
    parser.add_argument("--floor-calls", type=int, default=20, help="network calls timed per floor (at most N)")
    parser.add_argument("--determinism", choices=("on", "off", "both"), default="on", help="exact-mode numerics")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget of the whole run")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    args = parser.parse_args(argv)
    steps = args.steps or (4 if args.tiny else 50)
    args.jobs = args.jobs or (1 if args.tiny else 8)
    started = time.perf_counter() if started is None else started
    rec = Recorder(args.out, args.budget_s, started)
    try:
        return run(args, steps, rec)
    except BudgetSpent:  # outside a section: the build, the warm-up, or between sections
        rec.stopped = True
        rec.report["skipped"].append({"section": "the rest of the run", "reason": "stopped: budget spent"})
        rec.close()
        print(f"budget spent; wrote {args.out}", flush=True)
        return 1
    except Exception as exc:  # outside a section (the build, the warm-up): recorded, then raised
        rec.report["skipped"].append({"section": "the rest of the run", "reason": f"failed: {type(exc).__name__}"})
        rec.close()
        raise
    finally:
        rec.disarm()


def run(args: argparse.Namespace, steps: int, rec: Recorder) -> int:
    """Build, warm up and measure every section into ``rec`` (see the module docstring)."""
    device = bdia.models.resolve_device(args.device)
    dtype = bdia.models.resolve_dtype(args.dtype, device)
    modes = {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[args.determinism]
    set_determinism(device, modes[0] == "on")
    building = time.perf_counter()
    model = build(args, device, dtype)
    report = rec.report
    build_s = time.perf_counter() - building
    report["startup_s"] = time.perf_counter() - rec.started
    params = InversionParams(model=model.name, prompt=SOURCE, steps=steps)
    picture = imaging.fit_to_model(imaging.sample_image(), model.height, model.width)
    nfe_invert, nfe_edit = steps, steps - 1
    g = args.guidance_scale
    report.update(
        {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "model": model.name,
            "family": model.family,
            "dtype": str(dtype).removeprefix("torch."),
            "vae_dtype": None if model.vae is None else str(model.vae.dtype).removeprefix("torch."),
            "size_px": [model.width, model.height],
            "steps": steps,
            "edit_guidance_scale": g,
            "determinism": args.determinism,
            "budget_s": args.budget_s,
            "build_s": build_s,
            "edit_nfe": {"invert": nfe_invert, "edit": nfe_edit},
        }
    )
    rec.header = (
        f"{report['device']}, {model.name}, {report['dtype']}, {model.width} px, {steps} steps, "
        f"torch {torch.__version__}, determinism {args.determinism}"
    )
    print(f"model {model.name} on {device} ({dtype}), {model.width}×{model.height} px, built in {build_s:.1f}s")

    # Warm up every path once per mode (kernels, allocator, autotuning, prompt encoder) at 2 steps.
    warm = InversionParams(model=model.name, prompt=SOURCE, steps=2)
    digest_s, _ = timed(model, lambda: model.weights_digest)  # hashed once, for every fingerprint after
    report["weights_digest_s"] = digest_s
    warm_s = 0.0
    for mode in modes:
        set_determinism(device, mode == "on")
        uncached_edit(model, picture, warm, g)
        seconds, _ = timed(model, lambda: uncached_edit(model, picture, warm, g))  # the second, for estimates
        warm_s = max(warm_s, seconds)
    report["warm_up_s"] = warm_s
    report["edit"] = "plain: guided regeneration under the edit prompt, no attention control, no mask"
    per_nfe = {mode: warm_s / 3 for mode in modes}  # until the floor is measured (warm-up: 2 + 1 NFE and the VAE)
    calls = max(3, min(args.floor_calls, steps))

    # 1. The UNet-only floor.
    floors: dict[str, tuple[float, float]] = {}
    for mode in modes:

        def floor(mode: str = mode) -> tuple[float, float]:
            set_determinism(device, mode == "on")
            return unet_floor(model, steps, False, calls), unet_floor(model, steps, True, calls)

        result = rec.section(f"floor ({mode})", 2 * (2 + 2 * calls) * per_nfe[mode], floor)
        if result is None:
            continue
        floors[mode] = result
        per_nfe[mode] = result[1]
        f1, f2 = result
        report[key("unet_floor_ms", mode)] = {"1_row": f1 * 1e3, "2_rows": f2 * 1e3}
        report[key("unet_floor_edit_s", mode)] = nfe_invert * f1 + nfe_edit * f2
        rec.rows.append((f"UNet-only floor per NFE, 1 row / 2 rows{tag(mode, modes)}", f"{_ms(f1)} / {_ms(f2)}"))
        rec.rows.append(
            (
                f"UNet-only floor of a {nfe_invert}+{nfe_edit}-NFE edit{tag(mode, modes)}",
                f"{nfe_invert * f1 + nfe_edit * f2:.2f} s",
            )
        )
        print(f"floor{tag(mode, modes)}: {_ms(f1)} (1 row) / {_ms(f2)} (2 rows)", flush=True)

    # 2. The uncached edit.
    def uncached() -> Any:
        return uncached_edit(model, picture, params, g)

    job_s: dict[str, float] = {}
    inversion = None
    for mode in modes:

        def edit(mode: str = mode) -> tuple[float, Any]:
            set_determinism(device, mode == "on")
            return timed(model, uncached, repeats=2)

        result = rec.section(f"uncached edit ({mode})", 2 * 1.3 * (nfe_invert + nfe_edit) * per_nfe[mode], edit)
        if result is None:
            continue
        seconds, (inv, _) = result
        inversion = inversion or inv
        job_s[mode] = seconds
        report[key("uncached_edit_s", mode)] = seconds
        text = f"{seconds:.2f} s"
        if mode in floors:
            ratio = seconds / report[key("unet_floor_edit_s", mode)]
            report[key("uncached_over_floor", mode)] = ratio
            text += f" ({ratio:.2f}× floor)"
        rec.rows.append((f"uncached edit end to end (encode, invert, edit, decode){tag(mode, modes)}", text))
        print(f"uncached edit{tag(mode, modes)}: {seconds:.2f}s", flush=True)

    # 3. The cached edit (in the first mode only).
    first = modes[0]
    if inversion is not None:
        data = inversion.to_bytes()

        def cached() -> float:
            set_determinism(device, first == "on")
            seconds, _ = timed(
                model,
                lambda: bdia.regenerate(model, Inversion.from_bytes(data), EDIT, guidance_scale=g, edit=PLAIN),
                repeats=2,
            )
            return seconds

        seconds = rec.section(f"cached edit ({first})", 2 * 1.3 * nfe_edit * per_nfe[first], cached)
        if seconds is not None:
            report["cached_edit_s"] = seconds
            report["cached_over_uncached"] = seconds / job_s[first]
            rec.rows.append(
                (
                    f"cached edit (pair from bytes, edit, decode){tag(first, modes)}",
                    f"{seconds:.2f} s ({seconds / job_s[first]:.2f}× uncached)",
                )
            )
            print(f"cached edit: {seconds:.2f}s", flush=True)

    # 4. Round trips, in exact mode only (before throughput: they are short, and exactness is the point).
    roundtrips: dict[str, Any] = {}
    if "on" in modes:
        family = "sdxl" if model.family == "stable-diffusion-xl" else "sd15"
        for name, options in ROUNDTRIP_MODES[family]:

            def trip(options: dict[str, Any] = options) -> dict[str, Any]:
                set_determinism(device, True)
                return bdia.roundtrip(model, steps=steps, prompt=SOURCE, **options)

            r = rec.section(f"round trip {name}", 1.5 * 3 * steps * per_nfe["on"], trip)
            if r is None:
                continue
            roundtrips[name] = {k: r[k] for k in ("rel_error", "max_abs_error", "bit_exact", "nfe", "seconds")}
            report["roundtrip"] = roundtrips
            rec.rows.append(
                (
                    f"round trip, {name}",
                    f"rel {r['rel_error']:.3g}, max abs {r['max_abs_error']:.3g}"
                    + (" (bit-exact)" if r["bit_exact"] else ""),
                )
            )
            print(f"{name}: rel {r['rel_error']:.3g}, bit-exact {r['bit_exact']}", flush=True)

    # 5. Batched throughput, interleaved by batch size.
    z0 = imaging.encode(model, picture)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rates: dict[str, dict[int, float]] = {mode: {} for mode in modes}
    for b in sizes:
        jobs = max(args.jobs, b)
        for mode in modes:
            previous = list(rates[mode].values())
            one_job = job_s.get(mode, 1.3 * (nfe_invert + nfe_edit) * per_nfe[mode])
            estimate = 1.2 * jobs / previous[-1] if previous else 1.2 * jobs * one_job
            estimate += 0.1 * estimate  # the 2-step warm-up at this B

            def rate(mode: str = mode, b: int = b, jobs: int = jobs) -> float:
                set_determinism(device, mode == "on")
                throughput(model, z0, warm, g, b, b)  # kernels and autotuning of this B's shapes
                return throughput(model, z0, params, g, b, jobs)

            result = rec.section(f"throughput B = {b} ({mode})", estimate, rate)
            if result is None:
                continue
            rates[mode][b] = result
            report.setdefault(key("throughput_jobs_per_s", mode), {})[str(b)] = result
            text = f"{result:.3f} jobs/s"
            base = rates[mode].get(sizes[0])
            if base is not None:
                report.setdefault(key("throughput_over_b1", mode), {})[str(b)] = result / base
                text += f" ({result / base:.2f}×)"
            rec.rows.append((f"throughput, B = {b} ({jobs} invert+edit jobs){tag(mode, modes)}", text))
            print(f"B = {b}{tag(mode, modes)}: {result:.3f} jobs/s", flush=True)

    # Exact mode's cost: time on / time off.
    if len(modes) == 2:
        cost: dict[str, float] = {}
        if len(floors) == 2:
            cost["unet_floor_1_row"] = floors["on"][0] / floors["off"][0]
            cost["unet_floor_2_rows"] = floors["on"][1] / floors["off"][1]
        if len(job_s) == 2:
            cost["uncached_edit"] = job_s["on"] / job_s["off"]
        for b in sizes:
            if b in rates["on"] and b in rates["off"]:
                cost[f"throughput_b{b}"] = rates["off"][b] / rates["on"][b]
        report["exact_mode_cost"] = cost
        for name, ratio in cost.items():
            rec.rows.append((f"exact-mode cost (time on / off), {name.replace('_', ' ')}", f"{ratio:.3f}×"))
        rec.save()

    set_determinism(device, "on" in modes)
    report["fingerprint"] = numerics.fingerprint(model, batch_size=1, slot=0)
    if device.type == "cuda":
        report["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    rec.close()
    print("\n" + report["markdown"])
    print(f"wrote {args.out} ({report['seconds']:.0f} s in all)")
    return 0


def key(name: str, mode: str) -> str:
    """The report's key of a measure: ``name`` in exact mode, ``name_fast`` with determinism off."""
    return name if mode == "on" else f"{name}_fast"


def tag(mode: str, modes: list[str]) -> str:
    return "" if len(modes) == 1 else (", exact" if mode == "on" else ", fast")


if __name__ == "__main__":
    raise SystemExit(main(started=time.perf_counter() - process_age_s()))
