"""Diffusion models: one object holding the networks, the tokenizer and the noise schedule.

``load_model`` accepts the seeded ``tiny-random`` family (built from configs, nothing
downloaded), the bundled ``shapes`` model, a local diffusers folder in
StableDiffusionPipeline layout, or a hub id. A model without a VAE works in pixel space:
its "latent" is the image itself scaled to [-1, 1].
"""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidParameter, UnknownModel

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTokenizer

TINY_RANDOM = "tiny-random"
SHAPES = "shapes"
SHAPES_DIR = Path(__file__).parent / "assets" / "shapes"

# SD 1.5's noise schedule, as a DDIM config (docs/numerics.md#level-grid reads the grid from it).
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

_PIPELINE_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")
_TINY_NAME = re.compile(r"tiny-random(?P<v>-v)?(?P<pixel>-pixel)?(?:-seed(?P<seed>[1-9]\d*))?")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


@dataclass(eq=False)
class DiffusionModel:
    """An SD-1.x/2.x-style text-to-image model, ready for inference on ``device`` in ``dtype``.

    ``scheduler`` is the model's noise schedule as a DDIMScheduler (whatever class a folder names,
    its config is read into DDIM); ``LevelGrid.from_scheduler(model.scheduler, steps)`` gives the grid.
    """

    name: str
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL | None
    scheduler: SchedulerMixin
    device: torch.device
    dtype: torch.dtype

    @property
    def pixel_space(self) -> bool:
        """True when the network works on pixels (no VAE)."""
        return self.vae is None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (1 in pixel space)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The VAE latent scaling factor (1 in pixel space)."""
        return 1.0 if self.vae is None else float(self.vae.config.scaling_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the network's input at the native size."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return int(self.unet.config.in_channels), int(h), int(w)

    @property
    def height(self) -> int:
        """Native image height in pixels."""
        return self.latent_shape[1] * self.vae_scale_factor

    @property
    def width(self) -> int:
        """Native image width in pixels."""
        return self.latent_shape[2] * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        """What the network predicts: ``"epsilon"`` or ``"v_prediction"``."""
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    @property
    def compiled(self) -> bool:
        """True when the UNet is wrapped by ``torch.compile`` (it changes the bits; see docs/numerics.md)."""
        return hasattr(self.unet, "_orig_mod")

    @property
    def attention_backend(self) -> str:
        """The attention implementations in use (UNet processors, text encoder), for the fingerprint."""
        processors = set()
        for processor in self.unet.attn_processors.values():
            backend = getattr(processor, "_attention_backend", None)
            processors.add(type(processor).__name__ + (f"[{backend}]" if backend else ""))
        text = getattr(self.text_encoder.config, "_attn_implementation", None) or "eager"
        parts = [f"unet={'+'.join(sorted(processors)) or 'none'}", f"text={text}"]
        if self.device.type == "cuda":
            kernels = {
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            }
            parts.append("sdpa=" + "+".join(k for k, on in kernels.items() if on))
        return ";".join(parts)

    @cached_property
    def weights_digest(self) -> str:
        """A short sha256 of every weight (names, dtypes, shapes and bytes), computed once per model."""
        digest = hashlib.sha256()
        for part in ("unet", "text_encoder", "vae"):
            module = getattr(self, part)
            if module is None:
                continue
            module = getattr(module, "_orig_mod", module)
            for key, tensor in sorted(module.state_dict().items()):
                digest.update(f"{part}.{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
                digest.update(data.numpy())
        return digest.hexdigest()[:16]

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] in the model dtype, exactly as StableDiffusionPipeline computes them."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            embeddings = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return embeddings.to(self.device, self.text_encoder.dtype)

    def predict(self, latents: torch.Tensor, timestep: int | torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The raw UNet output for a batch (ε or v, per ``prediction_type``), in the model dtype.

        ``timestep`` is one int for every row, or a tensor with one timestep per row.
        """
        if isinstance(timestep, torch.Tensor):
            t = timestep.to(self.device, torch.int64)
            if t.ndim == 1 and t.shape[0] != latents.shape[0]:
                raise InvalidParameter(f"got {t.shape[0]} timesteps for a batch of {latents.shape[0]}")
        else:
            t = torch.tensor(int(timestep), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            return self.unet(
                latents.to(self.device, self.dtype),
                t,
                encoder_hidden_states=embeddings.to(self.device, self.dtype),
                return_dict=False,
            )[0]

    def info(self) -> dict[str, Any]:
        """A JSON-able summary for the API and the CLI."""
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "latent_shape": list(self.latent_shape),
            "prediction_type": self.prediction_type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "pixel_space": self.pixel_space,
        }


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; by default CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameter(f"unknown device {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameter(f"device {str(device)!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch.dtype; by default float16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise InvalidParameter(f"unknown dtype {dtype!r} (use float16, bfloat16, float32 or float64)")


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
) -> DiffusionModel:
    """Load a model by name (``tiny-random``, ``shapes``), local diffusers folder, or hub id.

    Named models are cached per (name, device, dtype) and shared: treat them as read-only.
    Folders and hub ids are loaded afresh on every call (hold on to the result). ``progress``:
    whether transformers', diffusers' and the Hub's loading and download bars may draw (default:
    only when stderr is a terminal).
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    with loading_bars(sys.stderr.isatty() if progress is None else progress):
        return _load(str(name_or_path), device, dtype)


@contextmanager
def loading_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled`` false, silence transformers', diffusers' and huggingface_hub's progress bars (their
    "Loading weights" and download bars) until the block ends, then restore them as they were."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    switches = (
        (transformers_logging.is_progress_bar_enabled, transformers_logging.enable_progress_bar),
        (diffusers_logging.is_progress_bar_enabled, diffusers_logging.enable_progress_bar),
        (lambda: not hub_utils.are_progress_bars_disabled(), hub_utils.enable_progress_bars),
    )
    was_on = [on for is_on, on in switches if is_on()]
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=1 refuses (and warns about) enabling
            warnings.simplefilter("ignore")
            for on in was_on:
                on()


def _load(name: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    if name == SHAPES or _TINY_NAME.fullmatch(name):
        return _load_named(name, device, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_pretrained(name, path, device, dtype)
    if path.exists():
        raise UnknownModel(f"model {name!r} is a file, not a diffusers pipeline folder")
    if _HUB_ID.fullmatch(name) and not name.startswith("."):
        return _load_pretrained(name, name, device, dtype)
    raise UnknownModel(
        f"unknown model {name!r}: not a local folder, and not 'tiny-random', 'shapes' or a hub id (owner/name)"
    )


@lru_cache(maxsize=8)
def _load_named(name: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    if name == SHAPES:
        if not SHAPES_DIR.is_dir():
            raise UnknownModel(f"the bundled 'shapes' weights are missing (no diffusers folder at {SHAPES_DIR})")
        return _load_pretrained(SHAPES, SHAPES_DIR, device, dtype)
    match = _TINY_NAME.fullmatch(name)
    return tiny_random_model(
        "v_prediction" if match["v"] else "epsilon",
        int(match["seed"] or 0),
        pixel_space=bool(match["pixel"]),
        device=device,
        dtype=dtype,
    )


def _load_pretrained(name: str, source: str | Path, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """Load the components one by one with their classes' ``from_pretrained`` (safetensors preferred).

    ``source`` is a local folder (a Path: nothing is downloaded) or a hub id (a str).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = isinstance(source, Path)
    if local:
        missing = [part for part in _PIPELINE_PARTS if not (source / part).is_dir()]
        if missing:
            raise UnknownModel(
                f"{name!r} is not a diffusers pipeline folder: no {', '.join(p + '/' for p in missing)} "
                "(expected the StableDiffusionPipeline layout)"
            )
        has_vae = (source / "vae").is_dir()
    try:
        if not local:
            has_vae = bool(DiffusionPipeline.load_config(source).get("vae", [None])[0])
        options = {"local_files_only": local}
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **options)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **options)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options)
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **options)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **options) if has_vae else None
    except Exception as exc:
        where = "from the folder" if local else "from the hub"
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnknownModel(f"cannot load model {name!r} {where}: {cause}") from exc
    if unet.config.addition_embed_type or unet.config.class_embed_type or unet.config.cross_attention_dim is None:
        raise UnknownModel(f"model {name!r} needs extra conditioning: only SD 1.x/2.x-style pipelines are supported")
    return _assemble(name, unet, text_encoder, tokenizer, vae, scheduler, device, dtype)


def _assemble(name, unet, text_encoder, tokenizer, vae, scheduler, device, dtype) -> DiffusionModel:
    for module in (unet, text_encoder, vae):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return DiffusionModel(name, unet, text_encoder, tokenizer, vae, scheduler, device, dtype)


def _tiny_components(prediction_type: str, seed: int, pixel_space: bool) -> dict[str, Any]:
    """Seeded tiny SD-1.x-shaped components (float32, CPU); the global RNG is left untouched."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import VOCAB_SIZE, byte_level_tokenizer

    if prediction_type not in ("epsilon", "v_prediction"):
        raise InvalidParameter(f"prediction type {prediction_type!r} is not supported (epsilon or v_prediction)")
    channels = 3 if pixel_space else 4
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32 if pixel_space else 8,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        vae = None
        if not pixel_space:
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(16, 32, 32),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=8,
                sample_size=32,
            )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=VOCAB_SIZE,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    return {
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": byte_level_tokenizer(),
        "vae": vae,
        "scheduler": DDIMScheduler(**SD15_SCHEDULER, prediction_type=prediction_type),
    }


def tiny_random_model(
    prediction_type: str = "epsilon",
    seed: int = 0,
    *,
    pixel_space: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> DiffusionModel:
    """A seeded tiny random model: 32×32 px, latents (4, 8, 8), or (3, 32, 32) in pixel space.

    Its name (``tiny-random[-v][-pixel][-seedN]``) loads it back with ``load_model``.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    parts = _tiny_components(prediction_type, seed, pixel_space)
    for key in ("unet", "text_encoder", "vae"):
        if parts[key] is not None:  # nn.Module.to: diffusers' own .to() warns about every dtype cast
            torch.nn.Module.to(parts[key], dtype=dtype)
    name = TINY_RANDOM + ("-v" if prediction_type == "v_prediction" else "") + ("-pixel" if pixel_space else "")
    name += f"-seed{seed}" if seed else ""
    return _assemble(name, device=device, dtype=dtype, **parts)


def tiny_random_pipeline(prediction_type: str = "epsilon", seed: int = 0) -> StableDiffusionPipeline:
    """The ``tiny-random`` components as a diffusers StableDiffusionPipeline (float32, CPU)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **_tiny_components(prediction_type, seed, pixel_space=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
