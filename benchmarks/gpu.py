"""GPU benchmark of the engine with an SD-1.5-sized model (docs/benchmarks.md). A script, for a CUDA machine:

    python benchmarks/gpu.py [--model PATH] [--steps 50] [--out gpu.json]
    python benchmarks/gpu.py --tiny            # the tiny random model, a few steps: runs anywhere

Without ``--model`` the networks are built from SD 1.5's configurations with random weights
(UNet2DConditionModel, a CLIP text encoder of SD 1.5's size over the byte-level tokenizer, the SD
AutoencoderKL), fp16 on CUDA. Measures, in one run and with exact-mode numerics (deterministic
algorithms, no TF32, no cuDNN autotuning):

1. the UNet-only floor: one network call per NFE in the job's layout (1 row unguided, 2 guided);
2. an uncached edit end to end at the native size (512 px): VAE encode, N-step inversion,
   N−1-step guided edit, VAE decode, against the floor for its NFE;
3. a cached edit (the latent pair read back from its bytes, then the edit);
4. batched throughput of invert+edit jobs with continuous batching at B = 1, 4, 8;
5. each mode's round trip of the recovered latent (DDIM, EDICT, BDIA float32 / float64 / fixed point).

Prints a markdown table and writes everything as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
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
from bdia.grid import LevelGrid
from bdia.inversion import Inversion
from bdia.models import SD15_SCHEDULER, DiffusionModel, _assemble
from bdia.ops import inverting, regenerating
from bdia.params import InversionParams
from bdia.sampling import Progress

SOURCE = "a red circle and a blue square on a grey background"
EDIT = "a green circle and a blue square on a grey background"


def sd15_random(device: torch.device, dtype: torch.dtype, seed: int = 0) -> DiffusionModel:
    """SD 1.5's architecture with random weights, built from its configurations on ``device``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bdia.tokenizer import VOCAB_SIZE, byte_level_tokenizer

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
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
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


def unet_floor(model: DiffusionModel, grid: LevelGrid, guided: bool, calls: int) -> float:
    """Seconds per network call (prompt encoding excluded) for one job alone: 1 row, or 2 with guidance."""
    cond = conditioning(model, grid, EDIT, 7.5 if guided else 1.0)
    z = torch.randn((1, *model.latent_shape), device=model.device, dtype=torch.float64)
    request = Request(z, grid.steps // 2, cond, Layout(), Progress(1, 1, "floor"))
    evaluate(model, [request])
    seconds, _ = timed(model, lambda: [evaluate(model, [request]) for _ in range(calls)], repeats=2)
    return seconds / calls


def edit_job(
    model: DiffusionModel, z0: torch.Tensor, params: InversionParams, guidance: float, layout: Layout
) -> Job[Any]:
    """An uncached edit as one job: invert, then edit under the edit prompt, in ``layout``."""
    inversion = yield from inverting(model, z0, params, layout=layout, keep_trajectory=False)
    return (yield from regenerating(model, inversion, EDIT, guidance_scale=guidance, layout=layout))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers SD 1.x folder (real weights); default: SD 1.5 random weights")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model and few steps (a smoke run)")
    parser.add_argument("--steps", type=int, help="N (default 50; 4 with --tiny)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="of the edit (inversion: 1)")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--jobs", type=int, default=8, help="jobs per throughput measurement")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    args = parser.parse_args(argv)
    steps = args.steps or (4 if args.tiny else 50)
    started = time.perf_counter()
    device = bdia.models.resolve_device(args.device)
    dtype = bdia.models.resolve_dtype(args.dtype, device)
    numerics.configure_determinism(device)

    if args.tiny:
        model = bdia.load_model("tiny-random", device=device, dtype=dtype)
    elif args.model:
        model = bdia.load_model(args.model, device=device, dtype=dtype)
    else:
        model = sd15_random(device, dtype)
    build_s = time.perf_counter() - started
    params = InversionParams(model=model.name, prompt=SOURCE, steps=steps)
    grid = LevelGrid.from_scheduler(model.scheduler, steps)
    picture = imaging.fit_to_model(imaging.sample_image(), model.height, model.width)
    nfe_invert, nfe_edit = steps, steps - 1
    print(
        f"model {model.name} on {device} ({dtype}), {model.width}×{model.height} px, built in {build_s:.1f}s",
        flush=True,
    )

    # Warm up every path once (kernels, allocator, prompt encoder) at a few steps.
    warm = InversionParams(model=model.name, prompt=SOURCE, steps=2)
    bdia.regenerate(
        model, bdia.invert_latent(model, imaging.encode(model, picture), warm), EDIT, guidance_scale=args.guidance_scale
    )

    calls = max(3, min(20, steps))
    floor_1, floor_2 = unet_floor(model, grid, False, calls), unet_floor(model, grid, True, calls)
    floor_edit = nfe_invert * floor_1 + nfe_edit * floor_2

    def uncached() -> Any:
        inversion = bdia.invert_latent(model, imaging.encode(model, picture), params, keep_trajectory=False)
        return inversion, bdia.regenerate(model, inversion, EDIT, guidance_scale=args.guidance_scale)

    uncached_s, (inversion, _) = timed(model, uncached, repeats=2)
    data = inversion.to_bytes()

    def cached() -> Any:
        return bdia.regenerate(model, Inversion.from_bytes(data), EDIT, guidance_scale=args.guidance_scale)

    cached_s, _ = timed(model, cached, repeats=2)
    print(
        f"floor {floor_1 * 1e3:.1f} ms (1 row) / {floor_2 * 1e3:.1f} ms (2 rows); uncached edit {uncached_s:.2f}s, "
        f"cached {cached_s:.2f}s",
        flush=True,
    )

    z0 = imaging.encode(model, picture)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rates = {}
    for b in sizes:
        rates[b] = throughput(model, z0, params, args.guidance_scale, b, args.jobs)
        print(f"B = {b}: {rates[b]:.3f} jobs/s", flush=True)

    modes = [
        ("ddim", {"method": "ddim", "exact": False, "state_dtype": "float64"}),
        ("edict", {"method": "edict", "exact": False, "state_dtype": "float32"}),
        ("bdia float32", {"method": "bdia", "exact": False, "state_dtype": "float32"}),
        ("bdia float64", {"method": "bdia", "exact": False, "state_dtype": "float64"}),
        ("bdia fixed point", {"method": "bdia", "exact": True}),
    ]
    roundtrips = {}
    for name, options in modes:
        r = bdia.roundtrip(model, steps=steps, prompt=SOURCE, **options)
        roundtrips[name] = {k: r[k] for k in ("rel_error", "max_abs_error", "bit_exact", "nfe", "seconds")}
        print(f"{name}: rel {r['rel_error']:.3g}, bit-exact {r['bit_exact']}", flush=True)

    base = rates[sizes[0]]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": model.name,
        "dtype": str(dtype).removeprefix("torch."),
        "size_px": [model.width, model.height],
        "steps": steps,
        "edit_guidance_scale": args.guidance_scale,
        "build_s": build_s,
        "unet_floor_ms": {"1_row": floor_1 * 1e3, "2_rows": floor_2 * 1e3},
        "edit_nfe": {"invert": nfe_invert, "edit": nfe_edit},
        "unet_floor_edit_s": floor_edit,
        "uncached_edit_s": uncached_s,
        "uncached_over_floor": uncached_s / floor_edit,
        "cached_edit_s": cached_s,
        "cached_over_uncached": cached_s / uncached_s,
        "throughput_jobs_per_s": {str(b): rates[b] for b in sizes},
        "throughput_over_b1": {str(b): rates[b] / base for b in sizes},
        "roundtrip": roundtrips,
        "fingerprint": numerics.fingerprint(model, batch_size=1, slot=0),
        "seconds": time.perf_counter() - started,
    }
    rows = [
        ("UNet-only floor per NFE, 1 row / 2 rows", f"{floor_1 * 1e3:.1f} ms / {floor_2 * 1e3:.1f} ms"),
        (f"UNet-only floor of a {nfe_invert}+{nfe_edit}-NFE edit", f"{floor_edit:.2f} s"),
        (
            "uncached edit end to end (encode, invert, edit, decode)",
            f"{uncached_s:.2f} s ({uncached_s / floor_edit:.2f}× floor)",
        ),
        ("cached edit (pair from bytes, edit, decode)", f"{cached_s:.2f} s ({cached_s / uncached_s:.2f}× uncached)"),
        *(
            (f"throughput, B = {b} ({args.jobs} invert+edit jobs)", f"{rates[b]:.3f} jobs/s ({rates[b] / base:.2f}×)")
            for b in sizes
        ),
        *(
            (
                f"round trip, {name}",
                f"rel {v['rel_error']:.3g}, max abs {v['max_abs_error']:.3g}"
                + (" (bit-exact)" if v["bit_exact"] else ""),
            )
            for name, v in roundtrips.items()
        ),
    ]
    print(
        f"\n{report['device']}, {model.name}, {report['dtype']}, {model.width} px, {steps} steps, "
        f"torch {torch.__version__}\n"
    )
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    report["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
