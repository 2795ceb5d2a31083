"""Model families: how each diffusers pipeline layout turns prompts into its UNet's conditioning.

A family knows which text encoders a pipeline folder holds, how to load them, and how to encode
prompts *exactly* as its diffusers pipeline does (``encode``): the cross-attention embeddings
[n, L, D] plus any extra per-row UNet inputs (``added_cond_kwargs``, e.g. SDXL's pooled text
embeddings). Inputs that depend only on the working size (SDXL's time ids) are made at call time
from the latent's shape (``added_cond_kwargs``), so every row of a call agrees with its own latent.

``bdia.batching`` stacks the rows of many jobs without knowing which family made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from .errors import UnknownModel
from .flow import FLOW_FAMILIES
from .params import ModelDefaults, SampleDefaults

if TYPE_CHECKING:
    from .models import DiffusionModel

Tensor = torch.Tensor


class PromptRows(NamedTuple):
    """Encoded prompts: ``embeddings`` [n, L, D] and the extra per-row UNet inputs, each [n, …]."""

    embeddings: Tensor
    added: dict[str, Tensor]


def _tokens(tokenizer: Any, prompts: list[str]) -> Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@dataclass(eq=False)
class StableDiffusion:
    """SD 1.x/2.x (StableDiffusionPipeline): one CLIP text encoder, its last hidden state."""

    name: ClassVar[str] = "stable-diffusion"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    network: ClassVar[str] = "unet"
    """The pipeline's denoising network (folder and attribute name); the model keeps it as ``model.unet``."""

    @classmethod
    def load_networks(cls, source: str | Path, dtype: torch.dtype, **options: Any) -> tuple[Any, Any, Any, Any]:
        """(network, text_encoder, tokenizer, scheduler) of a folder or hub id; a DDIM-type schedule is read into
        DDIMScheduler whatever class the folder names."""
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return (
            UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **options),
            CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **options),
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
            DDIMScheduler.from_pretrained(source, subfolder="scheduler", **options),
        )

    @classmethod
    def load(cls, source: str | Path, config: dict[str, Any], dtype: torch.dtype, **options: Any) -> StableDiffusion:
        """The family's own parts beyond ``load_networks``' (``config``: the pipeline's ``model_index.json``)."""
        return cls()

    @classmethod
    def from_components(cls, components: dict[str, Any], config: dict[str, Any]) -> StableDiffusion:
        return cls()

    @classmethod
    def builtin_defaults(cls) -> ModelDefaults:
        """The defaults of a folder of this family without ``bdia_defaults.json`` (SD 1.x/2.x: the built-in
        ones, sampling as StableDiffusionPipeline.__call__ does: 50 steps, guidance 7.5)."""
        return ModelDefaults()

    def modules(self) -> dict[str, torch.nn.Module]:
        """The family's networks beyond the model's ``unet``, ``text_encoder`` and ``vae``."""
        return {}

    def check(self, unet: Any) -> str | None:
        """Why ``unet`` does not fit this family (None when it does)."""
        c = unet.config
        if c.addition_embed_type or c.class_embed_type or c.cross_attention_dim is None:
            return "it needs extra conditioning that StableDiffusionPipeline does not give"
        return None

    def encode(self, model: DiffusionModel, prompts: Sequence[str], *, negative: bool = False) -> PromptRows:
        """Prompt rows as StableDiffusionPipeline.encode_prompt computes them (``negative`` changes nothing)."""
        tokens = model.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=model.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(model.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(model.device)
        with torch.no_grad():
            embeddings = model.text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0]
        return PromptRows(embeddings.to(model.device, model.text_encoder.dtype), {})

    def added_cond_kwargs(self, model: DiffusionModel, latents: Tensor, added: dict[str, Tensor]) -> dict | None:
        """The UNet's ``added_cond_kwargs`` for a batch of ``latents`` with per-row inputs ``added``."""
        return None

    def forward(
        self, model: DiffusionModel, latents: Tensor, t: Tensor, embeddings: Tensor, added: dict[str, Tensor]
    ) -> Tensor:
        """The raw network output for a batch, called as the family's pipeline calls it (no grad by the caller)."""
        extra = self.added_cond_kwargs(model, latents, added)
        kwargs = {} if extra is None else {"added_cond_kwargs": extra}
        return model.unet(latents, t, encoder_hidden_states=embeddings, return_dict=False, **kwargs)[0]

    def prepare_vae(self, vae: Any, dtype: torch.dtype) -> Any:
        """The VAE as this family's pipeline runs it (SD 1.x/2.x: in the model dtype)."""
        return vae


@dataclass(eq=False)
class StableDiffusionXL(StableDiffusion):
    """SDXL (StableDiffusionXLPipeline): two CLIP encoders, penultimate hidden states concatenated, the
    second encoder's projected pooled output as ``text_embeds``, and size-conditioning ``time_ids``.

    With ``force_zeros_for_empty_prompt`` (the pipeline's config) the unconditional rows of a job with no
    negative prompt (an empty one, the engine's "none") are zeros, as the pipeline makes them.
    """

    name: ClassVar[str] = "stable-diffusion-xl"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = True

    @classmethod
    def load(cls, source: str | Path, config: dict[str, Any], dtype: torch.dtype, **options: Any) -> StableDiffusionXL:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        return cls(
            CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=dtype, **options),
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **options),
            bool(config.get("force_zeros_for_empty_prompt", True)),
        )

    @classmethod
    def from_components(cls, components: dict[str, Any], config: dict[str, Any]) -> StableDiffusionXL:
        force = bool(config.get("force_zeros_for_empty_prompt", True))
        return cls(components["text_encoder_2"], components["tokenizer_2"], force)

    @classmethod
    def builtin_defaults(cls) -> ModelDefaults:
        """Sampling as StableDiffusionXLPipeline.__call__ does: 50 steps, guidance 5.0."""
        return ModelDefaults(sample=SampleDefaults(steps=50, guidance_scale=5.0))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder_2": self.text_encoder_2}

    def check(self, unet: Any) -> str | None:
        c = unet.config
        if c.addition_embed_type != "text_time" or c.class_embed_type or c.cross_attention_dim is None:
            return "its UNet is not an SDXL one (addition_embed_type 'text_time')"
        return None

    def encode(self, model: DiffusionModel, prompts: Sequence[str], *, negative: bool = False) -> PromptRows:
        """StableDiffusionXLPipeline.encode_prompt (no clip skip): embeddings in text_encoder_2's dtype."""
        prompts = list(prompts)
        hidden, pooled = [], None
        with torch.no_grad():
            for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
                out = encoder(_tokens(tokenizer, prompts).to(model.device), output_hidden_states=True)
                if out[0].ndim == 2:  # the pipeline's rule: the pooled output of the last encoder that has one
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
        embeddings = torch.cat(hidden, dim=-1).to(model.device, self.text_encoder_2.dtype)
        pooled = pooled.to(model.device)  # type: ignore[union-attr]
        if negative and self.force_zeros_for_empty_prompt and all(p == "" for p in prompts):
            embeddings, pooled = torch.zeros_like(embeddings), torch.zeros_like(pooled)
        return PromptRows(embeddings, {"text_embeds": pooled})

    def added_cond_kwargs(self, model: DiffusionModel, latents: Tensor, added: dict[str, Tensor]) -> dict | None:
        """``text_embeds`` from the rows, and the pipeline's default ``time_ids`` for this working size:
        original size = target size = (height, width) of the latent in pixels, crop (0, 0)."""
        f = model.vae_scale_factor
        h, w = int(latents.shape[-2]) * f, int(latents.shape[-1]) * f
        text = added["text_embeds"]
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=text.dtype, device=text.device)
        return {"text_embeds": text, "time_ids": time_ids.repeat(latents.shape[0], 1)}

    def prepare_vae(self, vae: Any, dtype: torch.dtype) -> Any:
        """With ``force_upcast`` (the SDXL VAE overflows in float16) a float16 VAE runs in float32, as
        StableDiffusionXLPipeline decodes; its weights are kept in float32 (the VAE is a small share)."""
        if vae is not None and dtype == torch.float16 and vae.config.get("force_upcast", False):
            upcast_vae(vae)
        return vae


def _float32_inputs(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def upcast_vae(vae: Any) -> None:
    """Put ``vae`` in float32 and make its parts take float32 inputs whatever dtype their callers pass."""
    torch.nn.Module.to(vae, dtype=torch.float32)
    for part in ("encoder", "quant_conv", "post_quant_conv", "decoder"):
        module = getattr(vae, part, None)
        if isinstance(module, torch.nn.Module):
            module.register_forward_pre_hook(_float32_inputs)


Family = StableDiffusion
"""The base of every family (SD 1.x/2.x is the plain case)."""
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
}
"""stabilityai/stable-diffusion-xl-base-1.0's scheduler config (tiny SDXL pipelines, the GPU benchmark)."""

FAMILIES: tuple[type[StableDiffusion], ...] = (StableDiffusion, StableDiffusionXL, *FLOW_FAMILIES)  # type: ignore[assignment]


def family_for(class_name: str | None, model: str) -> type[StableDiffusion]:
    """The family of a pipeline class name (``model_index.json``'s ``_class_name``); a folder without
    one is taken as StableDiffusionPipeline. Unsupported pipelines raise ``UnknownModel``."""
    if class_name is None:
        return StableDiffusion
    for family in FAMILIES:
        if class_name in family.pipelines:
            return family
    supported = ", ".join(p for family in FAMILIES for p in family.pipelines)
    raise UnknownModel(f"model {model!r} is a {class_name}, which is not supported (supported: {supported})")


def family_class(name: str) -> type[StableDiffusion]:
    """The family called ``name`` (``DiffusionModel.family``, ``GET /v1/models``' ``family``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise UnknownModel(f"no model family {name!r} (families: {', '.join(f.name for f in FAMILIES)})")


def tiny_sdxl_pipeline(prediction_type: str = "epsilon", seed: int = 0, *, force_zeros: bool = True) -> Any:
    """A seeded tiny random StableDiffusionXLPipeline (float32, CPU; 32×32 px, latents (4, 8, 8)) built from
    configs shaped like diffusers' own SDXL test components, over the byte-level tokenizer (nothing downloaded).

    Its scheduler is an EulerDiscreteScheduler config like SDXL's own (the engine reads it into DDIM).
    The global RNG is left untouched.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from .tiny import tiny_clip, tiny_vae
    from .tokenizer import byte_level_tokenizer

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids × 8, pooled text 32
            cross_attention_dim=64,  # the two encoders' 32 + 32
            norm_num_groups=8,
        )
        vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
        text_encoder = tiny_clip(3, projection_dim=32)
        text_encoder_2 = tiny_clip(3, projection_dim=32, with_projection=True)
    scheduler = EulerDiscreteScheduler.from_config({**SDXL_SCHEDULER, "prediction_type": prediction_type})
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=byte_level_tokenizer(),
        tokenizer_2=byte_level_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros,
        add_watermarker=False,
    )


__all__ = [
    "FAMILIES",
    "Family",
    "PromptRows",
    "StableDiffusion",
    "StableDiffusionXL",
    "family_class",
    "family_for",
    "tiny_sdxl_pipeline",
    "upcast_vae",
]
