"""BDIAScheduler inside diffusers' own StableDiffusion and StableDiffusionXL pipelines gives the latents of
``bdia sample`` with the same settings (tiny random models saved and loaded through the real path, CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from bdia.cli import main
from bdia.errors import InvalidParameter
from bdia.families import tiny_sdxl_pipeline
from bdia.models import tiny_random_pipeline
from bdia.scheduler import BDIAScheduler

PROMPT = "a red circle on a grey background"
SEED, STEPS = 4, 10
# float32 on both sides; the scheduler reuses bdia.sampling's arithmetic and the pipeline's UNet batch is the one
# `bdia sample` builds, so the latents agree to the last bit here. The bound leaves room for BLAS kernels that
# pick different paths for the two call sites (a few float32 ulps per step).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    made = {"sd": root / "sd", "sd-v": root / "sd-v", "sdxl": root / "sdxl"}
    tiny_random_pipeline("epsilon").save_pretrained(made["sd"])
    tiny_random_pipeline("v_prediction").save_pretrained(made["sd-v"])
    tiny_sdxl_pipeline("epsilon", seed=1).save_pretrained(made["sdxl"])
    return made


def pipeline(folder):
    if (folder / "text_encoder_2").is_dir():
        pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, guidance: float) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(SEED)
    return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent", generator=generator)[
        0
    ]


def cli_latent(tmp_path, folder, gamma: float, guidance: float) -> torch.Tensor:
    latent = tmp_path / "z.safetensors"
    args = ["sample", "--model", str(folder), "--device", "cpu", "--prompt", PROMPT, "--seed", str(SEED)]
    args += ["--steps", str(STEPS), "--gamma", str(gamma), "--guidance", str(guidance), "--state-dtype", "float32"]
    assert main([*args, "--output", str(tmp_path / "x.png"), "--save-latent", str(latent), "--no-progress"]) == 0
    return load_file(latent)["z0"]


@pytest.mark.parametrize(
    ("kind", "gamma", "guidance"),
    [("sd", 1.0, 4.0), ("sd", 0.5, 1.0), ("sd-v", 0.8, 3.0), ("sdxl", 1.0, 5.0), ("sdxl", 0.6, 2.0)],
)
def test_scheduler_in_diffusers_pipeline_matches_bdia_sample(tmp_path, folders, kind, gamma, guidance):
    pipe = pipeline(folders[kind])
    pipe.scheduler = BDIAScheduler.from_config(pipe.scheduler.config, gamma=gamma)
    assert pipe.scheduler.config.gamma == gamma
    ours = run(pipe, guidance)
    cli = cli_latent(tmp_path, folders[kind], gamma, guidance)
    assert ours.shape == cli.shape
    assert (ours - cli).abs().max().item() <= TOLERANCE
    # …and it is BDIA, not DDIM: the same pipeline with diffusers' DDIM lands elsewhere.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert (run(pipe, guidance) - ours).abs().max().item() > 1e-3


def test_gamma_zero_is_diffusers_ddim(folders):
    pipe = pipeline(folders["sd"])
    ddim = run(pipe.__class__(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)}), 3)
    pipe.scheduler = BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.0)
    assert (run(pipe, 3) - ddim).abs().max().item() <= 1e-4


def test_config_round_trip_and_refusals(tmp_path):
    scheduler = BDIAScheduler.from_config(tiny_random_pipeline().scheduler.config, gamma=0.25)
    scheduler.save_pretrained(tmp_path)
    assert BDIAScheduler.from_pretrained(tmp_path).config.gamma == 0.25
    with pytest.raises(InvalidParameter, match="gamma must be in"):
        BDIAScheduler(gamma=1.5)
    with pytest.raises(InvalidParameter, match="set_timesteps"):
        BDIAScheduler().step(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 4, 8, 8))
    scheduler.set_timesteps(5)
    with pytest.raises(InvalidParameter, match="eta must be 0"):
        scheduler.step(torch.zeros(1, 4, 8, 8), scheduler.timesteps[0], torch.zeros(1, 4, 8, 8), eta=0.3)
    with pytest.raises(InvalidParameter, match="not on this grid"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 7, torch.zeros(1, 4, 8, 8))
