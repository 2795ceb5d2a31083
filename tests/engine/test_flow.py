"""Flow matching (SD 3, Flux) through the real loading path: parity with diffusers' pipelines, the Euler and
leapfrog maps on the scheduler's sigmas, exact round trips, images, masks and batching (tiny random models,
offline tokenizers, CPU, float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image
from safetensors.torch import load_file

from bdia.batching import Lane, Layout, advance, drive
from bdia.cli import main
from bdia.errors import UnknownModel
from bdia.flow import FlowGrid, tiny_flux_pipeline, tiny_sd3_pipeline
from bdia.models import DiffusionModel, load_model
from bdia.numerics import configure_determinism
from bdia.ops import invert, inverting, regenerate, roundtrip, sample, sampling
from bdia.params import InversionParams
from bdia.sampling import FixedPoint, bdia_invert, bdia_sample

PROMPT = "a purple star on a beige background"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny pipelines: SD 3 with and without T5, and Flux (guidance embedding, dynamic shifting)."""
    root = tmp_path_factory.mktemp("flow")
    made = {"sd3": root / "sd3", "sd3-no-t5": root / "sd3-no-t5", "flux": root / "flux"}
    tiny_sd3_pipeline(seed=3).save_pretrained(made["sd3"])
    tiny_sd3_pipeline(seed=4, t5=False).save_pretrained(made["sd3-no-t5"])
    tiny_flux_pipeline(seed=3).save_pretrained(made["flux"])
    return made


@pytest.fixture(scope="module")
def models(folders):
    loaded = {kind: load_model(folder, device="cpu") for kind, folder in folders.items()}
    configure_determinism(loaded["sd3"])
    return loaded


def diffusers_latent(folder, kind, *, steps, guidance, seed, negative=None, height=32, width=32) -> torch.Tensor:
    """The pipeline's own final latent (``output_type="latent"``; Flux's unpacked to [1, C, h, w])."""
    if kind == "flux":
        pipe = FluxPipeline.from_pretrained(folder)
    else:
        absent = {"text_encoder_3": None, "tokenizer_3": None} if kind == "sd3-no-t5" else {}
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, **absent)
    pipe.set_progress_bar_config(disable=True)
    extra = {} if negative is None else {"negative_prompt": negative}
    latents = pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed),
        **extra,
    ).images
    return FluxPipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor) if kind == "flux" else latents


def cli_latent(tmp_path, folder, *, steps, guidance, seed, height, width, negative=None, state_dtype="float32"):
    latent = tmp_path / "z.safetensors"
    args = ["sample", "--model", str(folder), "--device", "cpu", "--prompt", PROMPT, "--steps", str(steps)]
    args += ["--gamma", "0", "--guidance", str(guidance), "--seed", str(seed), "--state-dtype", state_dtype]
    args += ["--height", str(height), "--width", str(width)]
    args += ["--output", str(tmp_path / "x.png"), "--save-latent", str(latent), "--no-progress"]
    args += [] if negative is None else ["--negative-prompt", negative]
    assert main(args) == 0
    return load_file(latent)["z0"]


@pytest.mark.parametrize(
    ("kind", "guidance", "negative", "size", "state"),
    [
        ("sd3", 4.0, None, (32, 48), "float32"),  # CFG with "" as the uncond prompt; T5 rows
        ("sd3", 3.0, "blurry", (32, 32), "float64"),  # a negative prompt; a float64 state
        ("sd3-no-t5", 5.0, None, (32, 32), "float32"),  # no third encoder: zero T5 rows
        ("flux", 3.5, None, (32, 48), "float32"),  # distilled guidance; dynamic shift for this size
        ("flux", 1.5, None, (48, 32), "float64"),
    ],
)
def test_gamma_zero_sample_matches_the_pipeline(tmp_path, folders, kind, guidance, negative, size, state):
    height, width = size
    settings = dict(steps=5, guidance=guidance, seed=7, negative=negative, height=height, width=width)
    expected = diffusers_latent(folders[kind], kind, **settings)
    ours = cli_latent(tmp_path, folders[kind], **settings, state_dtype=state)
    assert ours.shape == expected.shape == (1, 4, height // 4, width // 4)
    assert float((ours.double() - expected.double()).abs().max()) <= 1e-4


def test_grid_is_the_schedulers_sigmas_with_the_pipelines_shift(models) -> None:
    flux, sd3 = models["flux"], models["sd3"]
    for size in ((8, 8), (8, 12), (64, 64)):
        grid = flux.level_grid(6, size)
        reference = FlowMatchEulerDiscreteScheduler.from_config(flux.scheduler.config)
        m = (1.15 - 0.5) / (4096 - 256)  # FluxPipeline's calculate_shift for its packed sequence length
        mu = (size[0] // 2) * (size[1] // 2) * m + (0.5 - m * 256)
        reference.set_timesteps(6, sigmas=np.linspace(1.0, 1 / 6, 6), mu=mu)
        assert grid.sigmas == tuple(float(s) for s in reference.sigmas.double().flip(0))
        assert grid.timesteps[1:] == tuple(float(t) for t in reference.timesteps.double().flip(0))
    assert flux.level_grid(6, (8, 8)).sigmas != flux.level_grid(6, (64, 64)).sigmas  # dynamic shifting
    shifted = sd3.level_grid(6, (8, 8))
    assert shifted.sigmas == sd3.level_grid(6, (64, 64)).sigmas  # SD 3: a fixed shift of 3
    assert shifted.sigmas[0] == 0.0 and shifted.sigmas[-1] == 1.0
    assert shifted.ddim_coefficients(4, 2) == (1.0, shifted.sigmas[2] - shifted.sigmas[4])


def test_bdia_on_a_flow_grid_is_euler_then_leapfrog_and_inverts_exactly() -> None:
    """With a synthetic velocity field: the first step is Euler, each later one x_{i−1} = x_{i+1} + (σ_{i−1} −
    σ_{i+1})·v(x_i); the fixed-point inversion of that walk gives the pair back bit for bit."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    grid = FlowGrid.from_flow_scheduler(scheduler, 6)
    s = grid.sigmas

    def velocity(x: torch.Tensor, level: int) -> torch.Tensor:
        return torch.sin(3 * x) - x * s[level]

    def run(walk):
        request = next(walk)
        try:
            while True:
                request = walk.send(velocity(*request))
        except StopIteration as done:
            return done.value

    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pair = run(bdia_sample(grid, noise))
    x = {6: noise, 5: noise + (s[5] - s[6]) * velocity(noise, 6)}
    for i in range(5, 0, -1):
        x[i - 1] = x[i + 1] + (s[i - 1] - s[i + 1]) * velocity(x[i], i)
    assert torch.allclose(pair.lo, x[0], rtol=0, atol=1e-12) and torch.allclose(pair.hi, x[1], rtol=0, atol=1e-12)

    lattice = FixedPoint()
    z0 = lattice.encode(x[0])
    inverted = run(bdia_invert(grid, lattice.decode(z0), lattice=lattice))
    assert torch.equal(run(bdia_sample(grid, inverted.hi, inverted.lo, lattice=lattice)).lo, z0)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_exact_roundtrip_cli_is_bit_exact(capsys, folders, kind) -> None:
    args = ["roundtrip", "--model", str(folders[kind]), "--device", "cpu", "--method", "bdia", "--exact"]
    assert main([*args, "--steps", "4", "--guidance", "2.0", "--prompt", PROMPT, "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bit_exact"] is True and report["max_abs_error"] == 0.0 and report["state"] == "fixed-point"


def test_float64_roundtrip_is_near_exact_and_euler_inversion_is_not(models) -> None:
    model = models["flux"]
    bdia = roundtrip(model, method="bdia", steps=5, exact=False, state_dtype="float64", guidance_scale=2.0)
    euler = roundtrip(model, method="ddim", steps=5, exact=False, state_dtype="float64", guidance_scale=2.0)
    assert bdia["rel_error"] <= 1e-12
    assert euler["rel_error"] > 1e-3  # plain Euler inversion evaluates v at the wrong point: measurably off


def test_image_inversion_is_exact_and_a_masked_edit_keeps_the_rest(models) -> None:
    """An image through the SD 3 VAE (shift and scaling factor), an exact reconstruction returning the upload,
    and a new prompt under a mask: outside it every latent value is the inversion's own."""
    model = models["sd3"]
    image = Image.new("RGB", (40, 24), (200, 180, 150))
    image.paste((90, 40, 160), (10, 4, 26, 20))
    inversion = invert(model, image, PROMPT, steps=4, guidance_scale=1.0, exact=True)
    assert inversion.z0.shape[-2:] == (6, 10)  # working size 40 × 24 (multiples of VAE 4 × patch 2)
    back = regenerate(model, inversion)
    assert back.exact and back.latent_max_abs_error == 0.0 and back.image.tobytes() == image.tobytes()

    mask = Image.new("L", (40, 24), 0)
    mask.paste(255, (0, 0, 20, 24))
    edit = regenerate(model, inversion, "a red circle", mask=mask)
    inside = edit.mask[0, 0]
    source = inversion.lattice.decode(inversion.z0)
    assert torch.equal(edit.z0[..., ~inside], source[..., ~inside])
    assert not torch.equal(edit.z0[..., inside], source[..., inside])


def test_two_jobs_side_by_side_match_each_alone(models) -> None:
    """Worker-style continuous batching: an inversion and a sample of one flow model share every network call
    (batch 2, a slot each) and give bit for bit what each gives alone in the same layout."""
    for kind, guidance in (("flux", 3.5), ("sd3", 3.0)):
        model = models[kind]
        params = InversionParams.create(model=model.name, prompt=PROMPT, steps=4, guidance_scale=guidance)
        z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

        def jobs(model=model, z0=z0, params=params, guidance=guidance):
            return (
                inverting(model, z0, params.check(), layout=Layout(2, 0), keep_trajectory=False),
                sampling(
                    model, "a red circle", seed=2, steps=4, gamma=1.0, guidance_scale=guidance, layout=Layout(2, 1)
                ),
            )

        alone = [drive(model, job) for job in jobs()]
        lanes = [Lane(job) for job in jobs()]
        while any(lane.live for lane in lanes):
            advance(model, lanes)
        assert all(lane.error is None for lane in lanes)
        assert torch.equal(lanes[0].result.z_hi, alone[0].z_hi) and torch.equal(lanes[0].result.z_lo, alone[0].z_lo)
        assert torch.equal(lanes[1].result.z0, alone[1].z0)


def test_a_broken_flow_folder_is_refused(tmp_path, folders) -> None:
    import shutil

    broken = tmp_path / "flux"
    shutil.copytree(folders["flux"], broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(UnknownModel, match="transformer/"):
        load_model(broken, device="cpu")
    half = tmp_path / "sd3"
    shutil.copytree(folders["sd3"], half)
    shutil.rmtree(half / "tokenizer_3")  # T5 is optional for SD 3, but not half of it
    with pytest.raises(UnknownModel, match="text_encoder_3 and tokenizer_3"):
        load_model(half, device="cpu")
    info = load_model(folders["flux"], device="cpu").info()
    assert (info["family"], info["prediction_type"], info["latent_shape"]) == ("flux", "flow", [4, 8, 8])


def test_a_loaded_flow_pipeline_gives_the_same_model(folders, models) -> None:
    pipe = FluxPipeline.from_pretrained(folders["flux"])
    wrapped = DiffusionModel.from_pipeline(pipe)
    assert wrapped.unet is pipe.transformer and wrapped.conditioner.text_encoder_2 is pipe.text_encoder_2
    assert wrapped.family == "flux" and wrapped.weights_digest == models["flux"].weights_digest
    settings = dict(seed=3, steps=3, gamma=1.0, guidance_scale=3.5)
    assert torch.equal(sample(wrapped, PROMPT, **settings).z0, sample(models["flux"], PROMPT, **settings).z0)
