"""Train the default ``shapes`` model: a small text-to-image diffusion model in pixel space.

    python -m shapes.train --out DIR --steps S --batch B --seed 0 [--device cuda] [--time-limit SECONDS]

(from the repository root: ``shapes`` is a top-level folder, not part of the installed package; the
trained weights live in ``bdia/assets/shapes/``).

A ``UNet2DConditionModel`` with cross-attention and a small ``CLIPTextModel`` over the byte-level
tokenizer are trained jointly from scratch on scenes drawn on the fly (:mod:`shapes.scenes`;
batch ``k`` is a pure function of the seed and ``k``), with ε- (or v-) prediction, min-SNR loss
weights, classifier-free-guidance dropout, AdamW with warm-up and cosine decay, and an EMA of the weights
(what is saved). DIR gets the StableDiffusionPipeline layout without a VAE (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``; safetensors), plus
``training.json`` (the run's record) and ``samples.png``.

Training covers all 1000 timesteps of the cosine schedule; the saved scheduler is the one the
model samples with (``sampling_scheduler_config``): for ε-prediction it is cut after timestep
``--sample-top`` (900), with trailing spacing, because above that the model's x₀ estimate is too
far off (docs/benchmarks.md, "Sample quality of the bundled model"). ``--prediction-type
v_prediction`` trains a model that can sample from t = 999, where ᾱ ≈ 0 (a pure-noise start then
carries no false information about the image's mean colour); ``--init DIR`` continues training a
saved model (a fine-tune; its sizes, not ``--model``'s); ``--short-captions P`` trains a fraction
P of the captions without their background phrase ("a red circle").

The run ends with a self-check: it loads DIR back through diffusers, samples held-out prompts with
DDIM and classifier-free guidance, and reports how often :mod:`shapes.classifier` sees the
prompt's objects. ``--time-limit`` bounds the whole run, self-check included: training stops early
(the learning-rate schedule then follows elapsed time) and saves what it has. Run as a command, the
run's clock starts when the process started (``process_start``), so interpreter start-up and the
imports of torch count too; ``main`` called from Python starts it when called.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bdia.tokenizer import VOCAB_SIZE, byte_level_tokenizer

from .classifier import compare
from .scenes import random_scene, render_batch, scene_rng

TRAIN_STREAM, CHECK_STREAM = 0, 2  # scene streams (benchmarks use others)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the UNet and the text encoder."""

    channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    head_dim: int = 32
    norm_groups: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 77


PRESETS = {
    "small": ModelConfig(),
    "micro": ModelConfig(channels=(32, 32), head_dim=16, norm_groups=8, text_width=32, text_layers=1, text_heads=2),
}


def scheduler_config(prediction_type: str = "epsilon", spacing: str = "leading") -> dict:
    """The training schedule: 1000 cosine-beta timesteps, ε- (or v-) prediction; ``spacing`` for sampling.

    With it the bundled model first shipped (leading spacing, whose top level 1000 − 1000/N rises with
    the step count N: 901 at 10 steps, 981 at 50); it now samples with ``sampling_scheduler_config``.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": prediction_type,
        "timestep_spacing": spacing,
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
    }


SAMPLE_TOP = 900
"""The highest timestep the saved ε-prediction model samples from (``sampling_scheduler_config``)."""


def sampling_scheduler_config(
    top: int = SAMPLE_TOP, spacing: str = "trailing", prediction_type: str = "epsilon"
) -> dict:
    """The scheduler the model is saved with: the training schedule cut after timestep ``top``.

    ``trained_betas`` holds the training betas of timesteps 0…top, so ᾱ(t) is bit-identical to
    training's wherever the sampler goes, and trailing spacing starts every sampling run at ``top``
    whatever the step count. Above ~900 the cosine schedule's ᾱ falls toward 0 and an ε-prediction
    model's x₀ error, (σ/α)·(ε error), grows without bound: more steps (leading spacing's top level is
    1000 − 1000/N) then meant colour casts and noise. ``top`` ≥ 999 keeps the whole schedule.
    """
    config = scheduler_config(prediction_type, spacing)
    if top >= config["num_train_timesteps"] - 1:
        return config
    from diffusers import DDIMScheduler

    betas = DDIMScheduler(**scheduler_config(prediction_type)).betas[: top + 1]
    return {**config, "num_train_timesteps": top + 1, "trained_betas": betas.tolist()}


def short_caption(scene) -> str:
    """The caption without its background phrase: ``"a red circle and a blue square"``."""
    return " and ".join(s.phrase for s in scene.shapes)


def build_model(config: ModelConfig, resolution: int = 32, prediction_type: str = "epsilon"):
    """(unet, text_encoder, tokenizer, training scheduler), freshly initialised from the global torch RNG."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(config.channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=config.channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=config.text_width,
        attention_head_dim=tuple(max(c // config.head_dim, 1) for c in config.channels),  # diffusers: = heads
        norm_num_groups=config.norm_groups,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            projection_dim=config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(**scheduler_config(prediction_type))
    return unet, text_encoder, byte_level_tokenizer(config.max_length), scheduler


def load_components(folder: Path, prediction_type: str = "epsilon"):
    """(unet, text_encoder, tokenizer, training scheduler) of a saved model, in float32, to continue training it."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    tokenizer = byte_level_tokenizer(text_encoder.config.max_position_embeddings)
    return unet, text_encoder, tokenizer, DDIMScheduler(**scheduler_config(prediction_type))


class SceneBatches(torch.utils.data.Dataset):
    """Training batch ``k``: (uint8 images (B, 3, H, W), token ids (B, L)), a pure function of (seed, k).

    A fraction ``uncond`` of the captions is replaced by the empty prompt (classifier-free guidance), and a
    fraction ``short`` of the others by the caption without its background phrase (``short_caption``), so
    that prompts naming the shapes only are in the model's distribution.
    """

    def __init__(
        self, seed: int, batch: int, resolution: int, uncond: float, max_length: int, length: int, short: float = 0.0
    ):
        self.seed, self.batch, self.resolution, self.uncond, self.short = seed, batch, resolution, uncond, short
        self.max_length, self.length = max_length, length
        self._tokenizer = None
        self._ids: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return self.length

    def tokens(self, caption: str) -> list[int]:
        if caption not in self._ids:
            if self._tokenizer is None:
                self._tokenizer = byte_level_tokenizer(self.max_length)
            self._ids[caption] = self._tokenizer(
                caption, padding="max_length", max_length=self.max_length, truncation=True
            ).input_ids
        return self._ids[caption]

    def scenes(self, k: int) -> tuple[list, list[str]]:
        """Batch ``k``'s scenes and the captions it trains them with."""
        rng = scene_rng(self.seed, k, TRAIN_STREAM)
        scenes = [random_scene(rng) for _ in range(self.batch)]
        drop = rng.random(self.batch) < self.uncond
        short = rng.random(self.batch) < self.short if self.short > 0 else np.zeros(self.batch, dtype=bool)
        captions = [
            "" if d else short_caption(s) if c else s.caption for s, d, c in zip(scenes, drop, short, strict=True)
        ]
        return scenes, captions

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scenes, captions = self.scenes(k)
        images = render_batch(scenes, self.resolution).transpose(0, 3, 1, 2)
        ids = [self.tokens(caption) for caption in captions]
        return torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(ids, dtype=torch.int64)


def encode(text_encoder, tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Text embeddings (B, L, D) as StableDiffusionPipeline computes them (padded, no attention mask)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return text_encoder(torch.tensor(ids.input_ids, device=device))[0]


@torch.no_grad()
def sample(
    unet,
    text_encoder,
    tokenizer,
    scheduler_cfg: dict,
    prompts: list[str],
    steps: int = 50,
    guidance: float = 4.0,
    seed: int = 0,
    batch: int = 256,
) -> np.ndarray:
    """DDIM samples with classifier-free guidance, as uint8 (N, H, W, 3)."""
    from diffusers import DDIMScheduler

    device = unet.device
    size = unet.config.sample_size
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((len(prompts), 3, size, size), generator=generator)
    uncond = encode(text_encoder, tokenizer, [""], device)
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        cond = encode(text_encoder, tokenizer, chunk, device)
        context = torch.cat([uncond.expand(len(chunk), -1, -1), cond])
        scheduler = DDIMScheduler.from_config(scheduler_cfg)
        scheduler.set_timesteps(steps)
        x = noise[start : start + len(chunk)].to(device, unet.dtype)
        for t in scheduler.timesteps:
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
        out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(out).numpy()


def self_check(folder: Path, n: int, steps: int, guidance: float, seed: int, device: torch.device) -> dict:
    """Load ``folder`` through diffusers, sample ``n`` held-out prompts and classify the samples."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    unet.to(device).eval()
    text_encoder.to(device).eval()
    scheduler_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scenes = [random_scene(scene_rng(seed, i, CHECK_STREAM)) for i in range(n)]
    images = sample(unet, text_encoder, tokenizer, scheduler_cfg, [s.caption for s in scenes], steps, guidance, seed)
    results = [compare(img, s, by_position=False) for img, s in zip(images, scenes, strict=True)]
    shapes = sum(r["shapes"] for r in results)
    cols = 8
    rows = [images[i : i + cols] for i in range(0, min(len(images), 64), cols)]
    rows[-1] = np.concatenate([rows[-1], np.zeros((cols - len(rows[-1]), *images.shape[1:]), np.uint8)])
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(folder / "samples.png")
    return {
        "samples": n,
        "ddim_steps": steps,
        "guidance": guidance,
        "prompt_accuracy": sum(r["ok"] for r in results) / max(n, 1),
        "object_accuracy": sum(r["objects_ok"] for r in results) / max(shapes, 1),
        "count_accuracy": sum(r["count_ok"] for r in results) / max(n, 1),
        "background_accuracy": sum(r["background_ok"] for r in results) / max(n, 1),
        "first_prompts": [s.caption for s in scenes[:64]],
    }


def save(folder: Path, unet, text_encoder, tokenizer, scheduler, dtype: torch.dtype) -> None:
    """Write the StableDiffusionPipeline layout (no VAE, no safety checker) with safetensors weights."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=text_encoder.to(dtype),
        tokenizer=tokenizer,
        unet=unet.to(dtype),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _quiet_libraries() -> None:
    """Only errors from diffusers and transformers (no progress bars, no advice about optional packages)."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def _lr_factor(progress: float, step: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at progress 1."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def process_start() -> float:
    """When this process started, on the ``time.monotonic`` clock (read from ``/proc``; elsewhere: now)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(age, 0.0)


def _setup_torch(args: argparse.Namespace) -> torch.device:
    """The training device, with fast (non-deterministic) kernels on CUDA; seeds the global RNG."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    return device


class Trainee:
    """The model in training: UNet and text encoder, AdamW, the EMA of the weights, and the loss's step."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.args, self.device = args, device
        if args.init:
            parts = load_components(Path(args.init), args.prediction_type)
        else:
            parts = build_model(PRESETS[args.model], args.resolution, args.prediction_type)
        self.unet, self.text_encoder, self.tokenizer, self.scheduler = parts
        self.unet.to(device).train()
        self.text_encoder.to(device).train()
        if args.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.params = [p for m in (self.unet, self.text_encoder) for p in m.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=args.lr,
            betas=(0.9, 0.99),
            weight_decay=args.weight_decay,
            **({"fused": True} if cuda else {}),
        )
        self.alphas = self.scheduler.alphas_cumprod.to(device, torch.float32)
        snr = self.alphas / (1 - self.alphas)
        if args.min_snr <= 0:
            self.loss_weight = torch.ones_like(snr)
        elif args.prediction_type == "epsilon":  # min-SNR-γ on the ε loss
            self.loss_weight = snr.clamp(max=args.min_snr) / snr
        else:  # the same weight on x₀'s error, for the v loss
            self.loss_weight = snr.clamp(max=args.min_snr) / (snr + 1)
        self.generator = torch.Generator(device=device).manual_seed(args.seed)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the UNet and of the text encoder."""
        return {
            "unet": sum(p.numel() for p in self.unet.parameters()),
            "text_encoder": sum(p.numel() for p in self.text_encoder.parameters()),
        }

    def step(self, pixels: torch.Tensor, ids: torch.Tensor, lr: float, step: int) -> torch.Tensor:
        """Optimisation step ``step`` (from 0) on uint8 images and token ids at ``lr``; its loss, unsynchronised."""
        args, device = self.args, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0 = pixels.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
        ids = ids.to(device, non_blocking=True)
        if args.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn(x0.shape, generator=self.generator, device=device)
        t = torch.randint(0, len(self.alphas), (x0.shape[0],), generator=self.generator, device=device)
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with self.autocast:
            context = self.text_encoder(ids)[0]
            eps = self.unet(xt, t, encoder_hidden_states=context).sample
        target = noise if args.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        loss = ((eps.float() - target) ** 2).mean(dim=(1, 2, 3)).mul(self.loss_weight[t]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, args.clip)
        self.optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        return loss.detach()

    def save_ema(self, folder: Path, dtype: torch.dtype) -> None:
        """Replace the weights by their EMA and save them to ``folder`` (the pipeline layout, in ``dtype``) with
        the scheduler the model samples with (``sampling_scheduler_config``)."""
        from diffusers import DDIMScheduler

        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        folder.mkdir(parents=True, exist_ok=True)
        args = self.args
        top = (
            args.sample_top
            if args.sample_top is not None
            else (SAMPLE_TOP if args.prediction_type == "epsilon" else 999)
        )
        sampler = DDIMScheduler(**sampling_scheduler_config(top, args.spacing, args.prediction_type))
        save(folder, self.unet.cpu(), self.text_encoder.cpu(), self.tokenizer, sampler, dtype)


class Pace:
    """The run's clock: its deadline, the time per step, and each logging window's rate and data wait.

    The first step pays for warm-up (kernel selection, data workers starting): it is not timed.
    """

    def __init__(self, started: float, time_limit: float | None, check_steps: float) -> None:
        self.started = started
        self.deadline = started + time_limit if time_limit else math.inf
        self.check_steps = check_steps  # the self-check's cost, in training steps
        self.first_done: float | None = None
        self.step_time: float | None = None
        self.window_start, self.window_steps, self.wait = time.monotonic(), 0, 0.0

    def reserve(self) -> float:
        """Seconds kept for the rest of the run after training: saving, the self-check, a margin."""
        return 20.0 + 1.5 * self.check_steps * (self.step_time or 0.0)

    def out_of_time(self, now: float) -> bool:
        """Whether one more step and the rest of the run would not fit in the time limit."""
        return now + (self.step_time or 0.0) + self.reserve() > self.deadline

    def progress(self, step: int, steps: int, now: float) -> float:
        """How far the learning-rate schedule is: by steps, or by the clock when the time limit ends it sooner."""
        progress = step / steps
        if self.first_done is not None and math.isfinite(self.deadline):
            left = max(self.deadline - self.reserve() - self.first_done, 1e-6)
            progress = max(progress, (now - self.first_done) / left)
        return progress

    def stepped(self, step: int) -> None:
        """Count a finished step (``step`` done so far)."""
        self.window_steps += 1
        if step == 1:
            self.first_done = self.window_start = time.monotonic()
            self.window_steps, self.wait = 0, 0.0
            print(f"first step done at {self.first_done - self.started:.1f}s (start-up and warm-up)", flush=True)
        elif self.step_time is None and self.window_steps >= 2:
            self.step_time = (time.monotonic() - self.window_start) / self.window_steps

    def close_window(self) -> tuple[float, float]:
        """(steps per second, fraction of the time spent waiting for data) since the last call; starts a new window."""
        now = time.monotonic()
        if self.window_steps:
            self.step_time = (now - self.window_start) / self.window_steps
        rate = 1 / self.step_time if self.step_time else 0.0
        waited = self.wait / max(now - self.window_start, 1e-9)
        self.window_start, self.window_steps, self.wait = now, 0, 0.0
        return rate, waited

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def train_seconds(self) -> float:
        """Seconds since the first step was done (the untimed warm-up excluded)."""
        return time.monotonic() - (self.first_done or self.started)


def _loader(args: argparse.Namespace, device: torch.device) -> torch.utils.data.DataLoader:
    """The training batches, rendered by data workers (default: up to 12 on CUDA, none on CPU)."""
    cuda = device.type == "cuda"
    max_length = PRESETS[args.model].max_length
    data = SceneBatches(
        args.seed, args.batch, args.resolution, args.uncond, max_length, args.steps, args.short_captions
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    workers = args.workers if args.workers is not None else (max(min(12, cpus - 2), 1) if cuda else 0)
    return torch.utils.data.DataLoader(
        data,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers else None,
    )


def _train_steps(trainee: Trainee, loader: torch.utils.data.DataLoader, pace: Pace) -> tuple[int, list]:
    """Up to ``--steps`` steps, fewer when the time limit binds: (steps done, [(step, mean loss)] per log line)."""
    args = trainee.args
    losses: list[tuple[int, float]] = []
    loss_sum, loss_n = torch.zeros((), device=trainee.device), 0
    step = 0
    batches = iter(loader)
    while step < args.steps:
        now = time.monotonic()
        if pace.out_of_time(now):
            print(f"time limit: stopping after {step} steps", flush=True)
            break
        lr = args.lr * _lr_factor(pace.progress(step, args.steps, now), step, args.warmup)
        fetch = time.monotonic()
        pixels, ids = next(batches)
        pace.wait += time.monotonic() - fetch
        loss_sum += trainee.step(pixels, ids, lr, step)
        loss_n += 1
        step += 1
        pace.stepped(step)
        if step % args.log_every == 0 or step == args.steps:
            mean_loss = float(loss_sum) / loss_n  # synchronises
            rate, waited = pace.close_window()
            losses.append((step, round(mean_loss, 5)))
            print(
                f"step {step:6d}  loss {mean_loss:.4f}  lr {lr:.2e}  {rate:6.2f} it/s  {rate * args.batch:7.0f} img/s"
                f"  data wait {waited:4.0%}  elapsed {pace.elapsed():6.1f}s",
                flush=True,
            )
            loss_sum.zero_()
            loss_n = 0
    return step, losses


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _run_self_check(folder: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """``self_check`` with the run's settings, and its summary line."""
    check = self_check(folder, args.check_samples, args.check_steps, args.guidance, args.seed, device)
    print(
        f"self-check ({check['samples']} samples, DDIM {check['ddim_steps']}, guidance {check['guidance']}): "
        f"prompt accuracy {check['prompt_accuracy']:.1%}, objects {check['object_accuracy']:.1%}, "
        f"counts {check['count_accuracy']:.1%}, backgrounds {check['background_accuracy']:.1%}",
        flush=True,
    )
    return check


def train(args: argparse.Namespace, started: float | None = None) -> dict:
    """Train, save to ``args.out``, self-check; returns the run's record (also in ``training.json``).

    ``started`` (``time.monotonic``; default: now) is when the run's clock, and ``--time-limit``, started.
    """
    started = time.monotonic() if started is None else started
    _quiet_libraries()
    device = _setup_torch(args)
    trainee = Trainee(args, device)
    loader = _loader(args, device)
    sizes = trainee.parameter_counts()
    print(
        f"shapes: UNet {sizes['unet'] / 1e6:.2f} M + text encoder {sizes['text_encoder'] / 1e6:.2f} M parameters; "
        f"{args.steps} steps of {args.batch} at {args.resolution}px on {device}, {loader.num_workers} data workers",
        flush=True,
    )
    check_steps = args.check_samples * 2 * args.check_steps / (3 * args.batch)  # the self-check's cost
    pace = Pace(started, args.time_limit, check_steps)
    steps, losses = _train_steps(trainee, loader, pace)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = pace.train_seconds()

    out = Path(args.out)
    trainee.save_ema(out, torch.float16 if args.fp16 else torch.float32)
    record = {
        "command": "python -m shapes.train " + " ".join(getattr(args, "argv", sys.argv[1:])),
        "args": vars(args),
        "model": asdict(PRESETS[args.model]),
        "parameters": sizes,
        "steps_done": steps,
        "stopped_by_time_limit": steps < args.steps,
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(max(steps - 1, 0) * args.batch / max(train_seconds, 1e-9), 1),
        "losses": losses,
        "device": _device_name(device),
        "torch": torch.__version__,
    }
    print(f"saved {out} after {steps} steps ({record['images_per_second']:.0f} img/s)", flush=True)
    if args.check_samples:
        record["self_check"] = _run_self_check(out, args, device)
    record["total_seconds"] = round(pace.elapsed(), 1)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"done in {record['total_seconds']:.0f}s", flush=True)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (diffusers pipeline layout)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--model", choices=sorted(PRESETS), default="small")
    p.add_argument("--init", default=None, help="continue training this saved model (its sizes; --model is ignored)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon")
    p.add_argument(
        "--spacing", choices=("leading", "trailing", "linspace"), default="trailing", help="sampling spacing"
    )
    p.add_argument(
        "--sample-top", type=int, default=None, help="highest sampling timestep (default: 900 for epsilon, else 999)"
    )
    p.add_argument("--short-captions", type=float, default=0.0, help="fraction of captions without their background")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run, self-check included")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond", type=float, default=0.1, help="fraction of empty captions")
    p.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-γ loss weighting (0: plain MSE)")
    p.add_argument("--workers", type=int, default=None, help="data workers (default: up to 12 on CUDA, 0 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fp32", dest="fp16", action="store_false", help="save float32 weights (default float16)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--check-samples", type=int, default=256, help="self-check samples (0: none)")
    p.add_argument("--check-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, started: float | None = None) -> dict:
    """Run ``python -m shapes.train`` with ``argv`` (default: the command line).

    ``started`` is when the run's clock starts, on the ``time.monotonic`` clock (default: now).
    """
    started = time.monotonic() if started is None else started
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    return train(args, started)


if __name__ == "__main__":
    main(started=process_start())
