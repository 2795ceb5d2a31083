"""SDXL through the real loading path: parity with diffusers' StableDiffusionXLPipeline, exact round trips,
family detection, and a model built from a pipeline already loaded (tiny random models, CPU, float32)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from bdia.cli import main
from bdia.errors import UnknownModel
from bdia.families import StableDiffusionXL, tiny_sdxl_pipeline
from bdia.models import DiffusionModel, load_model
from bdia.ops import sample

PROMPT = "a purple star on a beige background"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny SDXL folders: ε and v prediction, and ε without ``force_zeros_for_empty_prompt``."""
    root = tmp_path_factory.mktemp("sdxl")
    made = {}
    for kind in ("epsilon", "v_prediction"):
        made[kind] = root / kind
        tiny_sdxl_pipeline(kind, seed=3).save_pretrained(made[kind])
    made["no-zeros"] = root / "no-zeros"
    shutil.copytree(made["epsilon"], made["no-zeros"])
    index = made["no-zeros"] / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"force_zeros_for_empty_prompt": False}))
    return made


def diffusers_latent(folder, *, steps, guidance, seed, negative=None, height=None, width=None) -> torch.Tensor:
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        eta=0.0,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images


def cli_latent(tmp_path, folder, *, steps, guidance, seed, gamma=0.0, negative=None, height=None, width=None):
    latent = tmp_path / "z.safetensors"
    args = ["sample", "--model", str(folder), "--device", "cpu", "--prompt", PROMPT, "--steps", str(steps)]
    args += ["--gamma", str(gamma), "--guidance", str(guidance), "--seed", str(seed), "--state-dtype", "float32"]
    args += ["--output", str(tmp_path / "x.png"), "--save-latent", str(latent), "--no-progress"]
    args += [] if negative is None else ["--negative-prompt", negative]
    args += [] if height is None else ["--height", str(height), "--width", str(width)]
    assert main(args) == 0
    return load_file(latent)["z0"]


@pytest.mark.parametrize(
    ("kind", "guidance", "negative", "size"),
    [
        ("epsilon", 5.0, None, None),  # no negative prompt: zero unconditional rows (force_zeros_for_empty_prompt)
        ("v_prediction", 1.0, None, None),
        ("epsilon", 3.0, "blurry, dark", (48, 40)),  # a negative prompt; time ids of a non-native size
        ("no-zeros", 4.0, None, None),  # without force_zeros the empty negative prompt is encoded
    ],
)
def test_gamma_zero_sample_matches_sdxl_pipeline(tmp_path, folders, kind, guidance, negative, size):
    height, width = size or (None, None)
    settings = dict(steps=8, guidance=guidance, seed=5, negative=negative, height=height, width=width)
    expected = diffusers_latent(folders[kind], **settings)
    ours = cli_latent(tmp_path, folders[kind], **settings)
    assert ours.shape == expected.shape == (1, 4, *(s // 4 for s in (size or (32, 32))))
    assert (ours.float() - expected.float()).abs().max().item() <= 1e-4


def test_force_zeros_changes_the_unconditional_rows(folders):
    """Guard for the parity test above: the two folders differ only in the flag, and it matters."""
    zeros = load_model(folders["epsilon"], device="cpu")
    encoded = load_model(folders["no-zeros"], device="cpu")
    assert zeros.encode([""], negative=True).embeddings.abs().max() == 0
    assert encoded.encode([""], negative=True).embeddings.abs().max() > 0
    assert torch.equal(zeros.encode([""]).embeddings, encoded.encode([""]).embeddings)  # a positive "" is encoded


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_exact_roundtrip_is_bit_exact(folders, kind, capsys):
    args = ["roundtrip", "--model", str(folders[kind]), "--device", "cpu", "--steps", "10", "--prompt", PROMPT]
    assert main([*args, "--method", "bdia", "--exact", "--guidance", "3", "--json", "--no-progress"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["bit_exact"] is True and exact["max_abs_error"] == 0
    assert main([*args, "--method", "bdia", "--gamma", "1", "--no-exact", "--state-dtype", "float64", "--json"]) == 0
    near = json.loads(capsys.readouterr().out)
    assert near["rel_error"] <= 1e-12
    assert main([*args, "--method", "ddim", "--json"]) == 0
    ddim = json.loads(capsys.readouterr().out)
    assert ddim["rel_error"] > 1e-4  # plain DDIM inversion is measurably inexact


def test_family_detection_and_info(folders):
    model = load_model(folders["epsilon"], device="cpu")
    assert isinstance(model.conditioner, StableDiffusionXL)
    info = model.info()
    assert (info["family"], info["height"], info["width"], info["latent_shape"]) == (
        "stable-diffusion-xl",
        32,
        32,
        [4, 8, 8],
    )
    assert "text_encoder_2" in model.conditioner.modules()


def test_unsupported_pipeline_and_missing_parts(tmp_path, folders):
    other = tmp_path / "future"
    shutil.copytree(folders["epsilon"], other)
    index = other / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"_class_name": "SomeFuturePipeline"}))
    with pytest.raises(UnknownModel, match="SomeFuturePipeline, which is not supported"):
        load_model(other, device="cpu")
    partial = tmp_path / "partial"
    shutil.copytree(folders["epsilon"], partial)
    shutil.rmtree(partial / "text_encoder_2")
    with pytest.raises(UnknownModel, match=r"no text_encoder_2/ \(expected the StableDiffusionXLPipeline layout\)"):
        load_model(partial, device="cpu")


def test_hub_id_failure_is_unknown_model(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast
    with pytest.raises(UnknownModel, match="cannot load model 'nobody/no-such-sdxl' from the hub"):
        load_model("nobody/no-such-sdxl", device="cpu")


def test_from_pipeline_gives_the_latents_of_the_folder(folders):
    folder = folders["epsilon"]
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    from_pipe = DiffusionModel.from_pipeline(pipe)
    assert from_pipe.unet is pipe.unet and from_pipe.conditioner.text_encoder_2 is pipe.text_encoder_2
    assert (from_pipe.device, from_pipe.dtype, from_pipe.name) == (torch.device("cpu"), torch.float32, str(folder))
    loaded = load_model(folder, device="cpu")
    assert from_pipe.weights_digest == loaded.weights_digest
    settings = dict(seed=2, steps=6, gamma=0.5, guidance_scale=4.0, state_dtype="float32")
    assert torch.equal(sample(from_pipe, PROMPT, **settings).z0, sample(loaded, PROMPT, **settings).z0)


def test_sdxl_rows_batch_with_any_neighbours_bit_for_bit(folders):
    """The extra per-row inputs (pooled text embeddings) travel with each job's rows in a shared call."""
    from bdia.batching import Layout, Request, conditioning, evaluate
    from bdia.grid import LevelGrid
    from bdia.sampling import Progress

    model = load_model(folders["epsilon"], device="cpu")
    grid = LevelGrid.from_scheduler(model.scheduler, 10)
    progress = Progress(1, 1, "test")
    z = torch.randn((1, *model.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = conditioning(model, grid, PROMPT, 4.0)
    alone = evaluate(model, [Request(z, 5, cond, Layout(3, 1), progress)])[0]
    others = [conditioning(model, grid, "a blue circle", 4.0, "blurry"), conditioning(model, grid, "", 4.0)]
    neighbours = [Request(z.flip(-1), 3, c, Layout(3, s), progress) for c, s in zip(others, (0, 2), strict=True)]
    assert torch.equal(evaluate(model, [*neighbours, Request(z, 5, cond, Layout(3, 1), progress)])[-1], alone)
    swapped = conditioning(model, grid, "a blue circle", 4.0)  # same embeddings, other pooled rows: other ε̂
    mixed = type(cond)(grid, cond.embeddings, 4.0, added=swapped.added)
    assert not torch.equal(evaluate(model, [Request(z, 5, mixed, Layout(3, 1), progress)])[0], alone)


def test_sdxl_invert_reconstruct_exact_and_controlled_edit(folders, test_image):
    from bdia.ops import invert, regenerate

    model = load_model(folders["epsilon"], device="cpu")
    inversion = invert(model, test_image, PROMPT, steps=8, strength=1.0, guidance_scale=2.0, exact=True)
    assert regenerate(model, inversion).latent_max_abs_error == 0
    edit = regenerate(model, inversion, "a green star on a beige background")  # attention control (cross)
    assert edit.latent_max_abs_error > 0 and edit.image.size == test_image.size


def test_from_pipeline_takes_a_flow_pipeline_too(tmp_path):
    """The entry point is family-generic: an SD 3 pipeline (a transformer, its own flow scheduler)."""
    from diffusers import StableDiffusion3Pipeline

    from bdia.flow import tiny_sd3_pipeline

    tiny_sd3_pipeline(seed=1).save_pretrained(tmp_path)
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path)
    from_pipe = DiffusionModel.from_pipeline(pipe)
    assert from_pipe.unet is pipe.transformer and from_pipe.prediction_type == "flow"
    settings = dict(seed=2, steps=5, gamma=0.5, guidance_scale=3.0, state_dtype="float32")
    loaded = load_model(tmp_path, device="cpu")
    assert torch.equal(sample(from_pipe, PROMPT, **settings).z0, sample(loaded, PROMPT, **settings).z0)


def test_float16_sdxl_runs_its_vae_in_float32(folders, test_image):
    """force_upcast: the SDXL VAE overflows in float16, so a float16 model keeps its VAE in float32."""
    from bdia import imaging

    model = load_model(folders["epsilon"], device="cpu", dtype="float16")
    assert (model.unet.dtype, model.conditioner.text_encoder_2.dtype, model.vae.dtype) == (
        torch.float16,
        torch.float16,
        torch.float32,
    )
    z0 = imaging.encode(model, imaging.fit_to_working(model, test_image))  # float16 inputs reach a float32 VAE
    assert torch.isfinite(z0).all() and imaging.decode(model, z0.half()).size == (z0.shape[-1] * 4, z0.shape[-2] * 4)
