"""Diffusion models: one object holding the networks, the tokenizer and the noise schedule.

``load_model`` accepts the seeded ``tiny-random`` family (built from configs, nothing
downloaded), the bundled ``shapes`` model, a local diffusers folder or a hub id in
StableDiffusionPipeline or StableDiffusionXLPipeline layout (``bdia.families``) or StableDiffusion3Pipeline
or FluxPipeline layout (``bdia.flow``), or, through
``DiffusionModel.from_pipeline``, a pipeline already loaded. A model without a VAE works in pixel space:
its "latent" is the image itself scaled to [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidParameter, UnknownModel
from .families import Family, PromptRows, StableDiffusion, family_for
from .grid import LevelGrid
from .params import DEFAULTS_FILE, ModelDefaults, read_defaults

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
    family: str = "stable-diffusion"
    """What kind of model: ``tiny-random``, ``shapes`` or ``stable-diffusion`` (SD 1.x/2.x layout)."""
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    """Its recommended parameters: its folder's ``bdia_defaults.json``, else the built-in defaults."""
    conditioner: Family = field(default_factory=StableDiffusion)
    """Its pipeline family's prompt encoding and extra networks (``bdia.families``)."""

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
    def shift_factor(self) -> float:
        """The VAE latent shift (SD 3, Flux: z = (mean − shift)·scaling); 0 for the others and in pixel space."""
        return 0.0 if self.vae is None else float(self.vae.config.get("shift_factor") or 0.0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the network's input at the native size."""
        if hasattr(self.conditioner, "latent_shape"):  # flow transformers (bdia.flow)
            return self.conditioner.latent_shape(self)
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
    def num_train_timesteps(self) -> int:
        """The length of its noise schedule: the most sampling steps it allows."""
        return int(self.scheduler.config.num_train_timesteps)

    @cached_property
    def max_steps(self) -> int:
        """The most sampling steps its schedule allows (``schedule_max_steps``)."""
        return schedule_max_steps(self.scheduler)

    @property
    def prediction_type(self) -> str:
        """What the network predicts: ``"epsilon"``, ``"v_prediction"`` or ``"flow"`` (a velocity, ``bdia.flow``)."""
        flow = getattr(self.conditioner, "prediction_type", None)
        return str(flow or self.scheduler.config.get("prediction_type", "epsilon"))

    def level_grid(self, steps: int, size: tuple[int, int] | None = None) -> LevelGrid:
        """The level grid of ``steps`` steps for latents of ``size`` (h, w; default: native): a flow model's
        sigmas depend on the size (``bdia.flow``); the others' come from ``LevelGrid.from_scheduler``."""
        if hasattr(self.conditioner, "level_grid"):
            return self.conditioner.level_grid(self, steps, tuple(size or self.latent_shape[1:]))
        return LevelGrid.from_scheduler(self.scheduler, steps)

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
        parts = {p: getattr(self, p) for p in ("unet", "text_encoder", "vae")} | self.conditioner.modules()
        for part, module in parts.items():
            if module is None:
                continue
            module = getattr(module, "_orig_mod", module)
            for key, tensor in sorted(module.state_dict().items()):
                digest.update(f"{part}.{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
                digest.update(data.numpy())
        return digest.hexdigest()[:16]

    def encode(self, prompts: Sequence[str], *, negative: bool = False) -> PromptRows:
        """Prompt rows (embeddings [B, L, D] and extra per-row UNet inputs) exactly as the model's diffusers
        pipeline computes them; ``negative``: these are negative prompts (an empty one is "none")."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.conditioner.encode(self, prompts, negative=negative)

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] in the model dtype, exactly as its diffusers pipeline computes them."""
        return self.encode(prompts).embeddings

    def predict(
        self,
        latents: torch.Tensor,
        timestep: int | torch.Tensor,
        embeddings: torch.Tensor,
        added: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The raw UNet output for a batch (ε or v, per ``prediction_type``), in the model dtype.

        ``timestep`` is one int for every row, or a tensor with one timestep per row; ``added`` holds the
        family's extra per-row inputs (``PromptRows.added``), one row per latent.
        """
        if hasattr(self.conditioner, "predict"):  # flow transformers (bdia.flow): float timesteps, own inputs
            return self.conditioner.predict(self, latents, timestep, embeddings, added or {})
        if isinstance(timestep, torch.Tensor):
            t = timestep.to(self.device, torch.int64)
            if t.ndim == 1 and t.shape[0] != latents.shape[0]:
                raise InvalidParameter(f"got {t.shape[0]} timesteps for a batch of {latents.shape[0]}")
        else:
            t = torch.tensor(int(timestep), dtype=torch.int64, device=self.device)
        latents = latents.to(self.device, self.dtype)
        added = {k: v.to(self.device, self.dtype) for k, v in (added or {}).items()}
        with torch.no_grad():
            return self.conditioner.forward(self, latents, t, embeddings.to(self.device, self.dtype), added)

    @classmethod
    def from_pipeline(cls, pipe: Any, name: str | None = None) -> DiffusionModel:
        """A model over the networks of a diffusers pipeline the caller already loaded (any family of
        ``bdia.families``): nothing is copied or moved, so its dtype, device placement (offloading hooks
        included) and adapters (LoRA) stay as they are. Its scheduler's config is read into DDIM (flow-matching
        families: into a fresh scheduler of its own class) for the level grid; its modules are put in eval mode
        without gradients. ``name`` defaults to the folder or hub
        id it was loaded from; a folder's ``bdia_defaults.json`` is read.

        An SDXL float16 VAE with ``force_upcast`` is cast to float32 in place (``bdia.families.upcast_vae``).
        """
        from diffusers import DDIMScheduler

        config = dict(pipe.config)
        kind = family_for(config.get("_class_name") or type(pipe).__name__, name or type(pipe).__name__)
        if hasattr(kind, "wrap_pipeline"):  # flow transformers (bdia.flow): their own parts and scheduler
            return kind.wrap_pipeline(pipe, name)
        origin = config.get("_name_or_path")
        name = name or (str(origin) if origin else type(pipe).__name__)
        conditioner = kind.from_components(pipe.components, config)
        network = pipe.components.get("unet") or pipe.components.get("transformer")
        problem = conditioner.check(network)
        if problem:
            raise UnknownModel(f"pipeline {name!r} does not fit {kind.pipelines[0]}: {problem}")
        device, dtype = torch.device(pipe._execution_device), network.dtype
        schedule = type(pipe.scheduler) if hasattr(kind, "load_model") else DDIMScheduler  # flow: its own class
        scheduler = schedule.from_config(pipe.scheduler.config)
        folder = Path(str(origin)) if origin else None
        max_steps = schedule_max_steps(scheduler)
        defaults = model_defaults(folder, max_steps) if folder is not None and folder.is_dir() else None
        vae = conditioner.prepare_vae(pipe.vae, dtype)
        parts = (network, pipe.text_encoder, pipe.tokenizer, vae, scheduler, device, dtype, kind.name, defaults)
        return _assemble(name, *parts, conditioner, move=False)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary for the API (its workers publish it: ``bdia.jobqueue.models``) and the CLI."""
        from .imaging import size_multiple  # imaging builds on this module

        return {
            "name": self.name,
            "family": self.family,
            "height": self.height,
            "width": self.width,
            "latent_shape": list(self.latent_shape),
            "prediction_type": self.prediction_type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "pixel_space": self.pixel_space,
            "latent_factor": self.vae_scale_factor,
            "size_multiple": size_multiple(self),
            "num_train_timesteps": self.num_train_timesteps,
            "max_steps": self.max_steps,
            "defaults": self.defaults.model_dump(mode="json"),
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
        return _load_pretrained(SHAPES, SHAPES_DIR, device, dtype, family=SHAPES)
    match = _TINY_NAME.fullmatch(name)
    return tiny_random_model(
        "v_prediction" if match["v"] else "epsilon",
        int(match["seed"] or 0),
        pixel_space=bool(match["pixel"]),
        device=device,
        dtype=dtype,
    )


def _load_pretrained(
    name: str, source: str | Path, device: torch.device, dtype: torch.dtype, family: str | None = None
) -> DiffusionModel:
    """Load the components one by one with their classes' ``from_pretrained`` (safetensors preferred),
    and the folder's ``bdia_defaults.json`` when it has one. The pipeline family (``bdia.families``) is
    read from ``model_index.json``'s ``_class_name`` (a folder without one is taken as SD 1.x/2.x).

    ``source`` is a local folder (a Path: nothing is downloaded) or a hub id (a str).
    """
    from diffusers import AutoencoderKL, DiffusionPipeline

    local = isinstance(source, Path)
    where = "from the folder" if local else "from the hub"
    options = {"local_files_only": local}
    try:
        if local:
            index = source / "model_index.json"
            config = json.loads(index.read_text()) if index.is_file() else {}
        else:
            config = dict(DiffusionPipeline.load_config(source))
    except Exception as exc:
        raise _cannot_load(name, where, exc) from exc
    kind = family_for(config.get("_class_name"), name)
    if hasattr(kind, "load_model"):  # flow transformers (bdia.flow) load their own parts
        return kind.load_model(name, source, config, device, dtype)
    if local:
        missing = [part for part in (kind.network, *kind.text_parts, "scheduler") if not (source / part).is_dir()]
        if missing:
            raise UnknownModel(
                f"{name!r} is not a diffusers pipeline folder: no {', '.join(p + '/' for p in missing)} "
                f"(expected the {kind.pipelines[0]} layout)"
            )
    has_vae = (source / "vae").is_dir() if local else bool(config.get("vae", [None])[0])
    try:
        unet, text_encoder, tokenizer, scheduler = kind.load_networks(source, dtype, **options)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **options) if has_vae else None
        conditioner = kind.load(source, config, dtype, **options)
    except Exception as exc:
        raise _cannot_load(name, where, exc) from exc
    problem = conditioner.check(unet)
    if problem:
        raise UnknownModel(f"model {name!r} does not fit {kind.pipelines[0]}: {problem}")
    defaults = model_defaults(source, schedule_max_steps(scheduler))
    parts = (unet, text_encoder, tokenizer, conditioner.prepare_vae(vae, dtype), scheduler)
    return _assemble(name, *parts, device, dtype, family or kind.name, defaults, conditioner)


def _cannot_load(name: str, where: str, exc: Exception) -> UnknownModel:
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UnknownModel(f"cannot load model {name!r} {where}: {cause}")


def schedule_max_steps(scheduler: Any) -> int:
    """The most sampling steps a DDIM-type schedule allows (``LevelGrid.from_scheduler`` builds their grid):
    ``num_train_timesteps``, or less where the timestep spacing would put the last step past the schedule's
    end (SD's "leading" spacing with offset 1: 999 of 1000). The API refuses more (``bdia.jobqueue.models``)."""
    from .grid import LevelGrid

    train_steps = int(scheduler.config.num_train_timesteps)
    for steps in range(train_steps, max(0, train_steps - 64), -1):
        try:
            LevelGrid.from_scheduler(scheduler, steps)
            return steps
        except InvalidParameter:
            continue
    return train_steps  # no grid near the end: leave the refusal to the engine


def model_defaults(source: str | Path, max_steps: int) -> ModelDefaults | None:
    """The ``bdia_defaults.json`` of a folder (a Path) or hub repository (a str), checked against the model's
    ``max_steps``; None when there is none (the family's ``builtin_defaults`` apply). A bad file raises
    ``InvalidParameter`` naming it."""
    if isinstance(source, Path):
        return read_defaults(source, max_steps) if (source / DEFAULTS_FILE).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(str(source), DEFAULTS_FILE)
    except EntryNotFoundError:  # not in the repository (remote), or not cached (offline)
        return None
    return ModelDefaults.read(path, max_steps)


def _over(given: ModelDefaults | None, family: ModelDefaults) -> ModelDefaults:
    """A folder's ``bdia_defaults.json`` (``given``) over its family's built-in defaults: what the file leaves
    out (at the top level, in ``edit`` and in ``sample``) is the family's."""
    if given is None:
        return family
    update: dict[str, Any] = {name: getattr(given, name) for name in given.model_fields_set - {"edit", "sample"}}
    for part in ("edit", "sample"):
        own = getattr(given, part)
        update[part] = getattr(family, part).model_copy(update={n: getattr(own, n) for n in own.model_fields_set})
    return family.model_copy(update=update)


def _assemble(
    name,
    unet,
    text_encoder,
    tokenizer,
    vae,
    scheduler,
    device,
    dtype,
    family="stable-diffusion",
    defaults=None,
    conditioner=None,
    move=True,
) -> DiffusionModel:
    conditioner = conditioner or StableDiffusion()
    for module in (unet, text_encoder, vae, *conditioner.modules().values()):
        if module is not None:
            (module.to(device) if move else module).eval().requires_grad_(False)
    defaults = _over(defaults, conditioner.builtin_defaults())
    parts = (unet, text_encoder, tokenizer, vae, scheduler, device, dtype, family, defaults, conditioner)
    return DiffusionModel(name, *parts)


def _tiny_components(prediction_type: str, seed: int, pixel_space: bool) -> dict[str, Any]:
    """Seeded tiny SD-1.x-shaped components (float32, CPU); the global RNG is left untouched."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from .tiny import tiny_clip, tiny_vae
    from .tokenizer import byte_level_tokenizer

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
            vae = tiny_vae()
        text_encoder = tiny_clip(2)
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
    return _assemble(name, device=device, dtype=dtype, family=TINY_RANDOM, **parts)


def tiny_random_pipeline(prediction_type: str = "epsilon", seed: int = 0) -> StableDiffusionPipeline:
    """The ``tiny-random`` components as a diffusers StableDiffusionPipeline (float32, CPU)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **_tiny_components(prediction_type, seed, pixel_space=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
