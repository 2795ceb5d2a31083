"""Models, the denoiser and the numerics fingerprint, against diffusers itself (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from bdia.denoiser import Denoiser, guided_eps
from bdia.errors import InvalidParameter, UnknownModel
from bdia.grid import LevelGrid
from bdia.models import (
    SHAPES_DIR,
    load_model,
    resolve_device,
    resolve_dtype,
    tiny_random_model,
    tiny_random_pipeline,
)
from bdia.numerics import configure_determinism, fingerprint, fingerprint_id
from bdia.params import ModelDefaults

PARTS = ("unet", "text_encoder", "vae")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def public_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def pipe():
    return tiny_random_pipeline()


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def saved(request, tmp_path_factory):
    pipeline = tiny_random_pipeline(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    pipeline.save_pretrained(folder)
    return pipeline, folder


# --- loading -------------------------------------------------------------------------------------


def test_tiny_random_is_deterministic_and_leaves_the_global_rng_alone(model, pipe):
    rng = torch.get_rng_state()
    again = tiny_random_pipeline()
    assert torch.equal(rng, torch.get_rng_state())
    for part in PARTS:
        assert same_weights(getattr(pipe, part), getattr(again, part))
        assert same_weights(getattr(pipe, part), getattr(model, part))
    assert not same_weights(pipe.unet, tiny_random_pipeline(seed=1).unet)


def test_tiny_random_shape_and_info(model):
    assert (model.height, model.width, model.latent_shape) == (32, 32, (4, 8, 8))
    assert model.vae_scale_factor == 4 and model.prediction_type == "epsilon" and not model.pixel_space
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float32)
    assert not any(m.training for m in (model.unet, model.text_encoder, model.vae))
    info = json.loads(json.dumps(model.info()))
    assert info == {
        "name": "tiny-random",
        "family": "tiny-random",
        "height": 32,
        "width": 32,
        "latent_shape": [4, 8, 8],
        "prediction_type": "epsilon",
        "dtype": "float32",
        "device": "cpu",
        "pixel_space": False,
        "latent_factor": 4,
        "size_multiple": 8,
        "num_train_timesteps": 1000,
        "max_steps": 999,
        "defaults": ModelDefaults().model_dump(mode="json"),  # no folder, no bdia_defaults.json: built in
    }
    assert load_model("tiny-random", device="cpu") is model  # named models are cached


def test_tiny_family_names_load_back():
    built = tiny_random_model("v_prediction", 3, pixel_space=True, device="cpu")
    assert built.name == "tiny-random-v-pixel-seed3"
    loaded = load_model(built.name, device="cpu")
    assert loaded.weights_digest == built.weights_digest
    assert loaded.pixel_space and loaded.prediction_type == "v_prediction"
    assert (loaded.height, loaded.width, loaded.latent_shape) == (32, 32, (3, 32, 32))


def test_saved_pipeline_loads_back_offline(saved):
    pipeline, folder = saved
    loaded = load_model(folder, device="cpu", dtype="fp32")
    assert loaded.name == str(folder)
    for part in PARTS:
        assert same_weights(getattr(pipeline, part), getattr(loaded, part))
    assert public_config(loaded.scheduler.config) == public_config(pipeline.scheduler.config)
    assert loaded.prediction_type == pipeline.scheduler.config.prediction_type
    assert loaded.tokenizer("a red circle").input_ids == pipeline.tokenizer("a red circle").input_ids
    assert (loaded.height, loaded.width) == (32, 32)


def test_pixel_space_folder_loads_without_vae(tmp_path):
    built = tiny_random_model(pixel_space=True, device="cpu")
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        getattr(built, part).save_pretrained(tmp_path / part)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.vae is None and loaded.pixel_space and loaded.scaling_factor == 1.0
    assert loaded.weights_digest == built.weights_digest


def test_unknown_models_raise_with_a_helpful_message(tmp_path):
    with pytest.raises(UnknownModel, match="unknown model 'no-such-model'"):
        load_model("no-such-model", device="cpu")
    with pytest.raises(UnknownModel, match="not a local folder"):
        load_model(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UnknownModel, match="not a diffusers pipeline folder: no unet/"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(UnknownModel, match="is a file"):
        load_model(tmp_path / "notes.txt", device="cpu")
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / part).mkdir()
    with pytest.raises(UnknownModel, match=r"cannot load model .* from the folder"):
        load_model(tmp_path, device="cpu")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_hub_failure_is_unknown_model(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast
    with pytest.raises(UnknownModel, match="cannot load model 'nobody/no-such-model' from the hub"):
        load_model("nobody/no-such-model", device="cpu")


def test_shapes_is_bundled_or_says_it_is_missing():
    if SHAPES_DIR.is_dir():
        assert load_model("shapes", device="cpu").info()["name"] == "shapes"
    else:
        with pytest.raises(UnknownModel, match="bundled 'shapes' weights are missing"):
            load_model("shapes", device="cpu")


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    names = ("fp16", "bfloat16", "float32", "torch.float64")
    assert [resolve_dtype(s, cpu) for s in names] == [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    with pytest.raises(InvalidParameter, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(InvalidParameter, match="unknown device"):
        resolve_device("gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameter, match="CUDA is not available"):
            resolve_device("cuda")


# --- prompts and the denoiser --------------------------------------------------------------------


def test_encode_prompt_matches_diffusers(model, pipe):
    cond, uncond = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    assert torch.equal(model.encode_prompt(["a red circle"]), cond)
    assert torch.equal(model.encode_prompt(["blurry"]), uncond)
    assert model.encode_prompt(["a", "b"]).shape == (2, 77, 32)


def test_predict_casts_its_inputs(model):
    out = model.predict(torch.randn(2, 4, 8, 8, dtype=torch.float64), 501, model.encode_prompt(["a", "b"]).double())
    assert out.dtype == torch.float32 and out.shape == (2, 4, 8, 8)


def test_denoiser_without_guidance_is_the_unet(model):
    grid = LevelGrid.from_scheduler(model.scheduler, 10)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    denoiser = Denoiser(model, grid, "a cat")
    eps = denoiser(z, 4)
    with torch.no_grad():
        expected = model.unet(z.float(), grid.timestep(4), model.encode_prompt(["a cat"])).sample
    assert eps.dtype == torch.float64 and torch.equal(eps, expected.double())
    assert denoiser.nfe == 1 and denoiser.layout == {"batch_size": 1, "slot": 0, "halves": 1, "rows": 1}


def test_denoiser_with_guidance_steps_exactly_like_the_diffusers_pipeline(model, pipe):
    """Every DDIM step of StableDiffusionPipeline (CFG 3) is reproduced bit for bit from our ε̂."""
    steps, prompt = 4, "a red circle"
    latents = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))]

    def record(_pipe, _i, _t, kwargs):
        latents.append(kwargs["latents"].clone())
        return kwargs

    pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=3.0,
        latents=latents[0],
        output_type="latent",
        callback_on_step_end=record,
    )
    grid = LevelGrid.from_scheduler(model.scheduler, steps)
    denoiser = Denoiser(model, grid, prompt, guidance_scale=3.0)
    assert denoiser.layout["rows"] == 2
    for k, t in enumerate(pipe.scheduler.timesteps):
        eps = denoiser(latents[k], grid.timesteps.index(int(t)))
        assert torch.equal(pipe.scheduler.step(eps, t, latents[k]).prev_sample, latents[k + 1])
    assert denoiser.nfe == steps


def test_v_prediction_is_converted_like_diffusers_ddim():
    model = load_model("tiny-random-v", device="cpu")
    grid = LevelGrid.from_scheduler(model.scheduler, 10)
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(10)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    for level in (1, 6, 10):
        t = grid.timestep(level)
        eps = Denoiser(model, grid, "a cat")(z, level)
        v = model.predict(z, t, model.encode_prompt(["a cat"]))
        reference = scheduler.step(v, t, z.float())
        x0 = (z - grid.sigma(level) * eps) / grid.alpha(level)
        a, b = grid.ddim_coefficients(level, level - 1)
        torch.testing.assert_close(x0.float(), reference.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close((a * z + b * eps).float(), reference.prev_sample, rtol=1e-5, atol=1e-5)


def test_padded_batch_layout(model):
    grid = LevelGrid.from_scheduler(model.scheduler, 10)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    padded = Denoiser(model, grid, "a cat", guidance_scale=2.0, batch_size=4, slot=3)
    assert padded.layout == {"batch_size": 4, "slot": 3, "halves": 2, "rows": 8}
    eps = padded(z, 7)
    assert torch.equal(eps, padded(z, 7)) and padded.nfe == 2
    torch.testing.assert_close(eps, Denoiser(model, grid, "a cat", guidance_scale=2.0)(z, 7), rtol=1e-4, atol=1e-4)
    # What else shares the batch does not change the sample's row once size and slot are fixed.
    embeddings = model.encode_prompt(["a cat"] * 4)
    zeros, noise = torch.zeros(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    zeros[2] = noise[2] = z[0].float()
    assert torch.equal(model.predict(zeros, 501, embeddings)[2], model.predict(noise, 501, embeddings)[2])


def test_denoiser_rejects_bad_input(model):
    grid = LevelGrid.from_scheduler(model.scheduler, 10)
    with pytest.raises(InvalidParameter, match="slot"):
        Denoiser(model, grid, "a", batch_size=2, slot=2)
    with pytest.raises(InvalidParameter, match="batch size"):
        Denoiser(model, grid, "a", batch_size=0)
    with pytest.raises(InvalidParameter, match="one sample"):
        Denoiser(model, grid, "a")(torch.zeros(2, 4, 8, 8), 1)
    v_grid = LevelGrid.from_scheduler(DDIMScheduler(prediction_type="v_prediction"), 10)
    with pytest.raises(InvalidParameter, match="predicts epsilon"):
        Denoiser(model, v_grid, "a")
    with pytest.raises(ValueError, match="expected 2 raw row"):
        guided_eps(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), 1, grid, 3.0)


# --- numerics ------------------------------------------------------------------------------------


def test_fingerprint_fields_and_id(model):
    fp = fingerprint(model, batch_size=1, slot=0)
    fields = "device torch cuda cudnn dtype attention compiled batch_size slot threads tf32 deterministic"
    assert set(fp) == {*fields.split(), "cudnn_benchmark", "model", "weights"}
    assert all(isinstance(v, str) for v in fp.values())
    assert fp["device"].startswith("cpu") and fp["threads"] == str(torch.get_num_threads())
    assert (fp["model"], fp["dtype"], fp["compiled"]) == ("tiny-random", "float32", "off")
    assert "AttnProcessor" in fp["attention"]
    assert fp["weights"] == model.weights_digest == tiny_random_model(device="cpu").weights_digest
    assert fp["weights"] != tiny_random_model(seed=1, device="cpu").weights_digest
    fid = fingerprint_id(fp)
    assert len(fid) == 16 and int(fid, 16) >= 0
    assert fingerprint_id(dict(reversed(fp.items()))) == fid
    assert fingerprint_id(fingerprint(model, batch_size=1, slot=0)) == fid
    assert fingerprint_id(fingerprint(model, batch_size=2, slot=1)) != fid


def test_configure_determinism_keeps_the_unet_running(model):
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        configure_determinism(model)
        fp = fingerprint(model, batch_size=1, slot=0)
        assert (fp["deterministic"], fp["tf32"], fp["cudnn_benchmark"]) == ("on", "off", "off")
        assert torch.backends.cudnn.deterministic
        z, emb = torch.randn(2, 4, 8, 8), model.encode_prompt(["a", ""])
        assert torch.equal(model.predict(z, 1, emb), model.predict(z, 1, emb))
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[4], saved[5]
