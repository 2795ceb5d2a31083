"""Flow-matching models: SD 3.x (StableDiffusion3Pipeline) and Flux (FluxPipeline) (docs/numerics.md#flow-matching).

The network predicts a velocity v along the path x_σ = (1 − σ)·x_0 + σ·ε. ``FlowGrid`` holds the model's
sigmas exactly as its ``FlowMatchEulerDiscreteScheduler`` computes them for the pipeline's arguments
(shift, dynamic shifting by image size) and gives the Euler map x_j = x_i + (σ_j − σ_i)·v as its
``ddim_coefficients`` (a = 1, b = σ_j − σ_i): the walks and lattices of ``bdia.sampling`` run unchanged.

The two families here plug into ``bdia.families`` (prompt encoding) and ``bdia.models`` (loading, the
network call, the grid). States are always unpacked latents [1, C, h, w]; Flux's 2×2 packing is a
permutation done at the network boundary, so it changes no arithmetic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import InvalidParameter, UnknownModel
from .grid import LevelGrid
from .params import EditParams, ModelDefaults, SampleDefaults
from .tiny import tiny_clip, tiny_vae

if TYPE_CHECKING:
    from .families import PromptRows
    from .models import DiffusionModel

Tensor = torch.Tensor
FLOW = "flow"
"""The prediction type of a flow-matching model (``DiffusionModel.prediction_type``, ``LevelGrid.prediction_type``)."""


@dataclass(frozen=True)
class FlowGrid(LevelGrid):
    """Levels 0…N of a flow-matching schedule: σ_0 = 0 < σ_1 < … < σ_N, network timesteps t_i (floats).

    ``alpha``/``sigma`` are the path's coefficients (1 − σ_i, σ_i); the map between levels is Euler's.
    """

    sigmas: tuple[float, ...] = ()

    def alpha(self, i: int) -> float:
        return 1.0 - self.sigmas[i]

    def sigma(self, i: int) -> float:
        return self.sigmas[i]

    def ddim_coefficients(self, i: int, j: int) -> tuple[float, float]:
        """(a, b) = (1, σ_j − σ_i): the Euler map E(x_i, v; i→j) = x_i + (σ_j − σ_i)·v, in float64."""
        return 1.0, self.sigmas[j] - self.sigmas[i]

    def level(self, timestep: float) -> int:
        for i in range(1, self.steps + 1):
            if self.timesteps[i] == float(timestep):
                return i
        raise InvalidParameter(f"timestep {float(timestep)} is not on this grid ({self.timesteps[1:]})")

    @classmethod
    def from_flow_scheduler(
        cls, scheduler: Any, steps: int, *, sigmas: Sequence[float] | None = None, mu: float | None = None
    ) -> FlowGrid:
        """The grid ``scheduler.set_timesteps(steps, sigmas=sigmas, mu=mu)`` produces (on a copy): what the
        pipeline passes it. Sigmas and timesteps are the scheduler's float32 values, held as float64."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidParameter(f"steps must be a positive integer, got {steps!r}")
        train_steps = int(scheduler.config.num_train_timesteps)
        if steps > train_steps:
            raise InvalidParameter(f"steps must be at most {train_steps} for this model, got {steps}")
        config = dict(scheduler.config)
        if config.get("invert_sigmas") or config.get("stochastic_sampling"):
            raise InvalidParameter("flow schedulers with invert_sigmas or stochastic_sampling are not supported")
        copy = FlowMatchEulerDiscreteScheduler.from_config(config)
        copy.set_timesteps(steps, device="cpu", sigmas=None if sigmas is None else list(sigmas), mu=mu)
        down = [float(s) for s in copy.sigmas.double()]  # σ_N … σ_1, then the terminal 0
        ts = [float(t) for t in copy.timesteps.double()]
        if len(down) != steps + 1 or down[-1] != 0.0 or any(a <= b for a, b in itertools.pairwise(down)):
            raise InvalidParameter(f"the scheduler's sigmas for {steps} steps are not strictly decreasing to 0")
        up = tuple(reversed(down))
        return cls(
            timesteps=(None, *reversed(ts)),
            alphas_cumprod=tuple((1.0 - s) ** 2 for s in up),
            prediction_type=FLOW,
            sigmas=up,
        )


def _clip_tokens(tokenizer: Any, prompts: list[str], length: int) -> Tensor:
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


@dataclass(eq=False)
class StableDiffusion3:
    """SD 3.x (StableDiffusion3Pipeline): two CLIP encoders with projection (penultimate hidden states,
    concatenated, zero-padded to T5's width) followed by T5's last hidden state (zeros when the folder has no
    T5), and the two pooled projections concatenated (``pooled``). Classifier-free guidance on v."""

    name: ClassVar[str] = "stable-diffusion-3"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    network: ClassVar[str] = "SD3Transformer2DModel"
    clip_class: ClassVar[str] = "CLIPTextModelWithProjection"
    prediction_type: ClassVar[str] = FLOW
    distilled_guidance: ClassVar[bool] = False
    max_sequence_length: ClassVar[int] = 256
    """The T5 length the pipeline uses by default (its ``max_sequence_length``)."""

    text_encoder_2: Any = None
    tokenizer_2: Any = None
    text_encoder_3: Any = None
    tokenizer_3: Any = None

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def builtin_defaults(cls) -> ModelDefaults:
        """The defaults of a folder without ``bdia_defaults.json``: StableDiffusion3Pipeline.__call__'s 28 steps
        (guidance 7.0 to sample from noise, none to invert), and edits as plain regenerations (attention
        control and the automatic mask are UNet-only, ``bdia.ops``)."""
        return ModelDefaults(
            steps=28,
            sample=SampleDefaults(steps=28, guidance_scale=7.0),
            edit=EditParams(control="none", mask_mode="none"),
        )

    @classmethod
    def _extra_parts(cls) -> dict[str, tuple[str, str]]:
        """Subfolder → (transformers class, role) of the networks beyond the first text encoder."""
        return {
            "text_encoder_2": ("CLIPTextModelWithProjection", "encoder"),
            "tokenizer_2": ("CLIPTokenizer", "tokenizer"),
            "text_encoder_3": ("T5EncoderModel", "encoder"),
            "tokenizer_3": ("T5TokenizerFast", "tokenizer"),
        }

    @classmethod
    def load(cls, source: str | Path, config: dict[str, Any], dtype: torch.dtype, **options: Any) -> StableDiffusion3:
        import transformers

        parts = {}
        for part, (kind, role) in cls._extra_parts().items():
            entry = config.get(part) or [None]
            if entry[0] is None or (isinstance(source, Path) and not (source / part).is_dir()):
                parts[part] = None  # the pipeline leaves it out (SD3: T5 is optional)
                continue
            loader = getattr(transformers, kind)
            extra = {"dtype": dtype} if role == "encoder" else {}
            parts[part] = loader.from_pretrained(source, subfolder=part, **extra, **options)
        return cls(**parts)

    @classmethod
    def from_components(cls, components: dict[str, Any], config: dict[str, Any]) -> StableDiffusion3:
        return cls(**{part: components.get(part) for part in cls._extra_parts()})

    @classmethod
    def load_model(
        cls, name: str, source: str | Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype
    ) -> DiffusionModel:
        """The whole model from a pipeline folder (a Path) or hub id (a str), as ``bdia.models.load_model`` does."""
        import diffusers
        import transformers

        from .models import _assemble, _cannot_load, model_defaults

        local = isinstance(source, Path)
        options = {"local_files_only": local}
        where = "from the folder" if local else "from the hub"
        if local:
            needed = ("transformer", "vae", "scheduler", *cls.text_parts)
            missing = [part for part in needed if not (source / part).is_dir()]
            if missing:
                raise UnknownModel(
                    f"{name!r} is not a diffusers pipeline folder: no {', '.join(p + '/' for p in missing)} "
                    f"(expected the {cls.pipelines[0]} layout)"
                )
        try:
            network = getattr(diffusers, cls.network).from_pretrained(
                source, subfolder="transformer", torch_dtype=dtype, **options
            )
            text_encoder = getattr(transformers, cls.clip_class).from_pretrained(
                source, subfolder="text_encoder", dtype=dtype, **options
            )
            tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options)
            vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **options)
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                source, subfolder="scheduler", **options
            )
            conditioner = cls.load(source, config, dtype, **options)
        except Exception as exc:
            raise _cannot_load(name, where, exc) from exc
        problem = conditioner.check(network)
        if problem:
            raise UnknownModel(f"model {name!r} does not fit {cls.pipelines[0]}: {problem}")
        defaults = model_defaults(source, int(scheduler.config.num_train_timesteps))
        parts = (network, text_encoder, tokenizer, vae, scheduler)
        return _assemble(name, *parts, device, dtype, cls.name, defaults, conditioner)

    @classmethod
    def wrap_pipeline(cls, pipe: Any, name: str | None = None) -> DiffusionModel:
        """``DiffusionModel.from_pipeline`` for this family: the pipeline's own modules, not copied or moved
        (dtype, device placement, offloading hooks and adapters kept); its scheduler's config is read into a
        fresh FlowMatchEulerDiscreteScheduler (the grid)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from .models import _assemble, model_defaults

        config = dict(pipe.config)
        origin = config.get("_name_or_path")
        name = name or (str(origin) if origin else type(pipe).__name__)
        conditioner = cls.from_components(pipe.components, config)
        problem = conditioner.check(pipe.transformer)
        if problem:
            raise UnknownModel(f"pipeline {name!r} does not fit {cls.pipelines[0]}: {problem}")
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        folder = Path(str(origin)) if origin else None
        steps = int(scheduler.config.num_train_timesteps)
        defaults = model_defaults(folder, steps) if folder is not None and folder.is_dir() else None
        device, dtype = torch.device(pipe._execution_device), pipe.transformer.dtype
        parts = (pipe.transformer, pipe.text_encoder, pipe.tokenizer, pipe.vae, scheduler, device, dtype)
        return _assemble(name, *parts, cls.name, defaults, conditioner, move=False)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            part: module
            for part in ("text_encoder_2", "text_encoder_3")
            if isinstance(module := getattr(self, part, None), torch.nn.Module)
        }

    def check(self, network: Any) -> str | None:
        if type(network).__name__ != self.network:
            return f"its denoising network is a {type(network).__name__}, not an {self.network}"
        for encoder, tokenizer in (("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")):
            optional = encoder == "text_encoder_3" and type(self) is StableDiffusion3  # SD 3's T5
            has_encoder, has_tokenizer = getattr(self, encoder) is not None, getattr(self, tokenizer) is not None
            if has_encoder != has_tokenizer or not (has_encoder or optional or encoder not in self._extra_parts()):
                return f"it needs both {encoder} and {tokenizer}"
        return None

    def prepare_vae(self, vae: Any, dtype: torch.dtype) -> Any:
        return vae

    # --- geometry and the grid ----------------------------------------------------------------------

    def patch_size(self, model: DiffusionModel) -> int:
        """Latent cells per transformer token along each side."""
        return int(model.unet.config.patch_size)

    def latent_shape(self, model: DiffusionModel) -> tuple[int, int, int]:
        """(C, h, w) at the native size: the transformer's ``sample_size`` (the pipeline's default size)."""
        size = int(model.unet.config.sample_size)
        return int(model.unet.config.in_channels), size, size

    def image_seq_len(self, model: DiffusionModel, size: tuple[int, int]) -> int:
        p = self.patch_size(model)
        return (int(size[0]) // p) * (int(size[1]) // p)

    def level_grid(self, model: DiffusionModel, steps: int, size: tuple[int, int]) -> FlowGrid:
        """StableDiffusion3Pipeline's schedule: the scheduler's own sigmas; ``mu`` by image size only with
        ``use_dynamic_shifting``."""
        config = model.scheduler.config
        mu = None
        if config.get("use_dynamic_shifting", None):
            mu = _calculate_shift(self.image_seq_len(model, size), config, max_shift=1.16)
        return FlowGrid.from_flow_scheduler(model.scheduler, steps, mu=mu)

    # --- prompts and the network call -----------------------------------------------------------------

    def _t5_length(self, model: DiffusionModel) -> int:
        return self.max_sequence_length

    def encode(self, model: DiffusionModel, prompts: Sequence[str], *, negative: bool = False) -> PromptRows:
        """StableDiffusion3Pipeline.encode_prompt (no clip skip; an empty negative prompt is encoded as "")."""
        from .families import PromptRows

        prompts = list(prompts)
        device, length = model.device, model.tokenizer.model_max_length
        hidden, pooled = [], []
        with torch.no_grad():
            for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
                out = encoder(_clip_tokens(tokenizer, prompts, length).to(device), output_hidden_states=True)
                pooled.append(out[0])
                hidden.append(out.hidden_states[-2].to(device, model.text_encoder.dtype))
            clip = torch.cat(hidden, dim=-1)
            t5_length = self._t5_length(model)
            if self.text_encoder_3 is None:
                width = int(model.unet.config.joint_attention_dim)
                t5 = torch.zeros((len(prompts), t5_length, width), device=device, dtype=model.text_encoder.dtype)
            else:
                ids = _clip_tokens(self.tokenizer_3, prompts, t5_length).to(device)
                t5 = self.text_encoder_3(ids)[0].to(device, self.text_encoder_3.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return PromptRows(torch.cat([clip, t5], dim=-2), {"pooled": torch.cat(pooled, dim=-1)})

    def added_cond_kwargs(self, model: DiffusionModel, latents: Tensor, added: dict[str, Tensor]) -> dict | None:
        return None

    def predict(
        self,
        model: DiffusionModel,
        latents: Tensor,
        timestep: float | Tensor,
        embeddings: Tensor,
        added: dict[str, Tensor],
    ) -> Tensor:
        """v for a batch of latents [B, C, h, w]: the pipeline's transformer call (timestep t = 1000·σ, float32)."""
        latents = latents.to(model.device, model.dtype)
        with torch.no_grad():
            return model.unet(
                hidden_states=latents,
                timestep=_timesteps(timestep, latents.shape[0], model.device),
                encoder_hidden_states=embeddings.to(model.device, model.dtype),
                pooled_projections=added["pooled"].to(model.device, model.dtype),
                return_dict=False,
            )[0]


@dataclass(eq=False)
class Flux(StableDiffusion3):
    """Flux (FluxPipeline): CLIP's pooled output (``pooled``) and T5's last hidden state; guidance-distilled
    (one row per sample, the guidance value a network input: ``guidance``); latents packed in 2×2 patches
    at the network boundary; text ids zeros, image ids the patch grid."""

    name: ClassVar[str] = "flux"
    pipelines: ClassVar[tuple[str, ...]] = ("FluxPipeline", "FluxImg2ImgPipeline")
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    network: ClassVar[str] = "FluxTransformer2DModel"
    clip_class: ClassVar[str] = "CLIPTextModel"
    distilled_guidance: ClassVar[bool] = True
    max_sequence_length: ClassVar[int] = 512
    default_sample_size: ClassVar[int] = 128
    """FluxPipeline's default latent size (1024 px with the 8× VAE)."""

    text_encoder_3: Any = None
    tokenizer_3: Any = None

    @classmethod
    def _extra_parts(cls) -> dict[str, tuple[str, str]]:
        return {"text_encoder_2": ("T5EncoderModel", "encoder"), "tokenizer_2": ("T5TokenizerFast", "tokenizer")}

    @classmethod
    def builtin_defaults(cls) -> ModelDefaults:
        """FluxPipeline.__call__'s 28 steps and distilled guidance 3.5 (its ``guidance_scale``, which an
        inversion conditions on too), edits as plain regenerations."""
        return ModelDefaults(
            steps=28,
            guidance_scale=3.5,
            sample=SampleDefaults(steps=28, guidance_scale=3.5),
            edit=EditParams(control="none", mask_mode="none"),
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder_2": self.text_encoder_2}

    def patch_size(self, model: DiffusionModel) -> int:
        return 2

    def latent_shape(self, model: DiffusionModel) -> tuple[int, int, int]:
        """(C, h, w) at the native size, C = the packed ``in_channels`` / 4: the VAE's ``sample_size`` in latent
        cells (1024 px for the released models, FluxPipeline's default), else FluxPipeline's default 128."""
        pixels = model.vae.config.get("sample_size") if model.vae is not None else None
        size = int(pixels) // model.vae_scale_factor if isinstance(pixels, int) else self.default_sample_size
        return int(model.unet.config.in_channels) // 4, size, size

    def level_grid(self, model: DiffusionModel, steps: int, size: tuple[int, int]) -> FlowGrid:
        """FluxPipeline's schedule: sigmas linspace(1, 1/N, N) (none with ``use_flow_sigmas``) and ``mu`` from
        the packed sequence length, passed to the scheduler."""
        config = model.scheduler.config
        sigmas = None if config.get("use_flow_sigmas", False) else _linspace_sigmas(steps)
        mu = _calculate_shift(self.image_seq_len(model, size), config)
        return FlowGrid.from_flow_scheduler(model.scheduler, steps, sigmas=sigmas, mu=mu)

    def encode(self, model: DiffusionModel, prompts: Sequence[str], *, negative: bool = False) -> PromptRows:
        """FluxPipeline.encode_prompt: CLIP's pooler output, T5 (``max_sequence_length`` 512) embeddings."""
        from .families import PromptRows

        prompts = list(prompts)
        device = model.device
        with torch.no_grad():
            ids = _clip_tokens(model.tokenizer, prompts, model.tokenizer.model_max_length).to(device)
            pooled = model.text_encoder(ids, output_hidden_states=False).pooler_output
            pooled = pooled.to(device, model.text_encoder.dtype)
            ids = _clip_tokens(self.tokenizer_2, prompts, self.max_sequence_length).to(device)
            t5 = self.text_encoder_2(ids, output_hidden_states=False)[0].to(device, self.text_encoder_2.dtype)
        return PromptRows(t5, {"pooled": pooled})

    def predict(
        self,
        model: DiffusionModel,
        latents: Tensor,
        timestep: float | Tensor,
        embeddings: Tensor,
        added: dict[str, Tensor],
    ) -> Tensor:
        """v for latents [B, C, h, w]: packed, the pipeline's call (timestep in the model dtype / 1000, guidance
        when the transformer embeds it), unpacked."""
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise InvalidParameter(f"Flux latents need even sides, got {h}×{w}")
        latents = latents.to(model.device, model.dtype)
        packed = FluxPipeline._pack_latents(latents, b, c, h, w)
        t = _timesteps(timestep, b, model.device).to(model.dtype)
        guidance = None
        if model.unet.config.guidance_embeds:
            if "guidance" not in added:
                raise InvalidParameter("this Flux model embeds a guidance value, but none was given")
            guidance = added["guidance"].reshape(b).to(model.device, torch.float32)
        text_ids = torch.zeros(embeddings.shape[1], 3, device=model.device, dtype=model.text_encoder.dtype)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, model.device, model.dtype)
        with torch.no_grad():
            out = model.unet(
                hidden_states=packed,
                timestep=t / 1000,
                guidance=guidance,
                pooled_projections=added["pooled"].to(model.device, model.dtype),
                encoder_hidden_states=embeddings.to(model.device, model.dtype),
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
        return unpack(out, h, w)


def unpack(packed: Tensor, h: int, w: int) -> Tensor:
    """Flux's packed latents [B, (h/2)·(w/2), 4C] as [B, C, h, w] (FluxPipeline._unpack_latents in latent cells)."""
    b, _, channels = packed.shape
    x = packed.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def _timesteps(timestep: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """The network timesteps as the pipelines pass them: float32, one per row."""
    if isinstance(timestep, Tensor):
        t = timestep.to(device, torch.float32)
        return t.expand(batch) if t.ndim == 0 else t
    return torch.full((batch,), float(timestep), device=device, dtype=torch.float32)


def _linspace_sigmas(steps: int) -> list[float]:
    import numpy as np

    return list(np.linspace(1.0, 1 / steps, steps))


def _calculate_shift(image_seq_len: int, config: Any, *, max_shift: float = 1.15) -> float:
    """``mu`` exactly as the pipelines compute it (diffusers' own ``calculate_shift``; ``max_shift``: the
    pipeline's default where the config has none, 1.16 in StableDiffusion3Pipeline)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )
    if not math.isfinite(mu):
        raise InvalidParameter(f"the scheduler's shift parameters give mu = {mu}")
    return mu


FLOW_FAMILIES: tuple[type[StableDiffusion3], ...] = (StableDiffusion3, Flux)


# --- tiny random pipelines (tests, demos: nothing downloaded) ---------------------------------------


def t5_test_tokenizer(model_max_length: int = 512) -> Any:
    """An offline T5 tokenizer: a Unigram over printable ASCII characters (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2),
    built with the tokenizers library; saved with ``save_pretrained`` it loads back as diffusers loads T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(c), -1.0) for c in range(33, 127)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=model_max_length,
    )


def _tiny_t5(d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=3 + 1 + 94,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


FLOW_VAE = {"scaling_factor": 1.5035, "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False}
"""The tiny SD 3 / Flux VAE's own settings (``bdia.tiny.tiny_vae``), as their diffusers test components have."""


def tiny_sd3_pipeline(seed: int = 0, *, t5: bool = True) -> Any:
    """A seeded tiny random StableDiffusion3Pipeline (float32, CPU; 32×32 px, latents (4, 8, 8), patch 2), shaped
    like diffusers' own SD3 test components, over offline tokenizers; without ``t5`` the pipeline has no
    third encoder (it then uses zeros). Scheduler: SD3's FlowMatchEulerDiscreteScheduler (shift 3). The global
    RNG is left untouched."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from .tokenizer import byte_level_tokenizer

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=96,  # T5's width; the two CLIPs' 32 + 32 are zero-padded to it
            pooled_projection_dim=64,  # the two CLIPs' projections, 32 + 32
            pos_embed_max_size=16,
        )
        vae = tiny_vae(**FLOW_VAE)
        text_encoder = tiny_clip(3, projection_dim=32, with_projection=True)
        text_encoder_2 = tiny_clip(3, projection_dim=32, with_projection=True)
        text_encoder_3 = _tiny_t5(96) if t5 else None
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=byte_level_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_test_tokenizer() if t5 else None,
    )


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """A seeded tiny random FluxPipeline (float32, CPU; 32×32 px, latents (4, 8, 8), packed 16 × 16), shaped like
    diffusers' own Flux test components, with a guidance embedding (Flux dev), over offline tokenizers.
    Scheduler: Flux dev's (dynamic shifting). The global RNG is left untouched."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from .tokenizer import byte_level_tokenizer

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels × the 2×2 packing
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        vae = tiny_vae(**FLOW_VAE)
        text_encoder, text_encoder_2 = tiny_clip(3, projection_dim=32), _tiny_t5(32)
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_test_tokenizer(),
        transformer=transformer,
    )
