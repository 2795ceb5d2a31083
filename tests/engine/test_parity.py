"""γ = 0 through the real CLI reproduces diffusers' own DDIM pipeline on a saved model folder.

See docs/numerics.md#reference-numbers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from bdia.cli import main
from bdia.models import tiny_random_pipeline


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_gamma_zero_sample_matches_diffusers_ddim(tmp_path, prediction_type, guidance):
    folder = tmp_path / "model"
    tiny_random_pipeline(prediction_type=prediction_type).save_pretrained(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompt, seed, steps = "a purple star on a beige background", 11, 25
    expected = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=0.0,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images

    latent = tmp_path / "z.safetensors"
    code = main(
        [
            "sample",
            "--model",
            str(folder),
            "--device",
            "cpu",
            "--prompt",
            prompt,
            "--steps",
            str(steps),
            "--gamma",
            "0",
            "--guidance",
            str(guidance),
            "--seed",
            str(seed),
            "--state-dtype",
            "float32",
            "--output",
            str(tmp_path / "x.png"),
            "--save-latent",
            str(latent),
            "--no-progress",
        ]
    )
    assert code == 0
    ours = load_file(latent)["z0"]
    assert ours.shape == expected.shape
    assert (ours.float() - expected.float()).abs().max().item() <= 1e-4
    assert (tmp_path / "x.png").exists()
