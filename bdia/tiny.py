"""The tiny random-weight components the test models share (CLIP text encoders, VAEs), built from configs.

Each family's tiny pipeline (``bdia.models``, ``bdia.families``, ``bdia.flow``) draws them from the global
torch RNG in its own order, so a seeded build is reproducible.
"""

from __future__ import annotations

from typing import Any


def tiny_clip(layers: int, *, projection_dim: int | None = None, with_projection: bool = False) -> Any:
    """A CLIP text encoder of width 32 over the byte-level tokenizer's vocabulary (with a text projection
    when ``with_projection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import VOCAB_SIZE

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=layers,
        **extra,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_vae(**overrides: Any) -> Any:
    """A 3-level AutoencoderKL with 4 latent channels (latent factor 4 at 32 px); ``overrides``: a family's
    own settings (scaling and shift factors, upcasting, quant convolutions)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        **overrides,
    )
