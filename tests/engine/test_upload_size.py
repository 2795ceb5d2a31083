"""The upload's size and shape are kept: an edit works at the upload's aspect ratio within the model's
pixel budget and returns an image of the upload's size whose pixels outside the edit mask are the
upload's own, bit for bit (pixel-space and latent models); an exact reconstruction returns the upload."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

import bdia
from bdia import imaging
from bdia.inversion import Inversion, read_metadata
from bdia.ops import latent_mask

STEPS = 4
UPLOAD = (77, 45)


@pytest.fixture(scope="module")
def upload() -> Image.Image:
    """A non-square upload of neither the model's size nor its aspect ratio."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0 : UPLOAD[1], 0 : UPLOAD[0]]
    base = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module", params=["tiny-random", "tiny-random-pixel"])
def model(request) -> bdia.DiffusionModel:
    loaded = bdia.load_model(request.param, device="cpu")
    bdia.configure_determinism(loaded)
    return loaded


@pytest.fixture(scope="module")
def inversion(model, upload) -> Inversion:
    """The upload's inversion, through its file bytes (what the CLI and the worker's cache hold)."""
    return Inversion.from_bytes(bdia.invert(model, upload, "a gradient", steps=STEPS).to_bytes())


def _left_mask() -> Image.Image:
    mask = Image.new("L", UPLOAD, 0)
    mask.paste(255, (0, 0, 30, 20))
    return mask


def test_working_size_keeps_the_aspect_ratio_within_the_pixel_budget(model):
    step = imaging.size_multiple(model)
    assert step == model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
    assert imaging.working_size(model, (256, 256)) == (model.width, model.height)  # square: the native size
    for size in [(77, 45), (45, 77), (640, 480), (1000, 10), (3, 2)]:
        w, h = imaging.working_size(model, size)
        assert w % step == 0 and h % step == 0 and w * h <= model.width * model.height, size
        error = abs(math.log((w / h) / (size[0] / size[1])))
        for other in range(step, model.width * model.height // step + 1, step):  # no admissible size is closer
            ow = model.width * model.height // other // step * step
            if ow >= step:
                assert error <= abs(math.log((ow / other) / (size[0] / size[1]))) + 1e-12
    assert imaging.working_size(model, (77, 45))[0] > imaging.working_size(model, (77, 45))[1]


def test_the_inversion_keeps_the_upload_and_works_at_its_aspect_ratio(model, upload, inversion):
    w, h = imaging.working_size(model, UPLOAD)
    f = model.vae_scale_factor
    assert tuple(inversion.z0.shape[-2:]) == (h // f, w // f) and w > h
    assert inversion.source_size == UPLOAD
    assert np.array_equal(np.asarray(inversion.source_image()), np.asarray(upload))
    meta = read_metadata(inversion.to_bytes())
    assert meta["format"] == "bdia.inversion/2" and '"width": 77' in meta["source"]


def test_an_exact_reconstruction_returns_the_upload_itself(model, upload, inversion):
    regen = bdia.regenerate(model, inversion)
    assert regen.exact and regen.latent_max_abs_error == 0.0
    assert regen.image.size == UPLOAD and np.array_equal(np.asarray(regen.image), np.asarray(upload))
    assert regen.psnr == math.inf and regen.mask is None and regen.mask_image is None
    assert regen.working_image.size == imaging.working_size(model, UPLOAD)
    if model.pixel_space:  # the working pixels are the resized upload's, exactly
        assert regen.working_psnr == math.inf
    else:  # the VAE round trip's own error, at the working size
        assert 0 < regen.working_psnr < math.inf


def test_pixels_outside_the_mask_are_the_uploads_own(model, upload, inversion):
    regen = bdia.regenerate(model, inversion, "a green triangle", mask=_left_mask())
    assert regen.image.size == UPLOAD and regen.mask_image.size == UPLOAD
    out, src = np.asarray(regen.image), np.asarray(upload)
    inside = np.asarray(regen.mask_image) > 0
    assert inside[:20, :30].all()  # the user's mask, grown by a cell: never smaller
    assert 0 < inside.mean() < 1 and regen.mask_fraction == pytest.approx(inside.mean())
    assert np.array_equal(out[~inside], src[~inside])  # bit for bit outside
    assert (out[inside] != src[inside]).any()  # the edit changed something inside
    assert regen.mask.dtype == torch.bool and regen.mask.shape[-2:] == inversion.z0.shape[-2:]


def test_masks_fit_the_working_size(model, inversion):
    f = model.vae_scale_factor
    working = (inversion.z0.shape[-1] * f, inversion.z0.shape[-2] * f)
    h, w = inversion.z0.shape[-2:]
    for size in [UPLOAD, (154, 90), working]:  # the upload's aspect ratio at any size, or the working size
        assert latent_mask(Image.new("L", size, 255), model, image_size=UPLOAD, working_size=working).all()
    generated = torch.zeros(1, 1, h, w, dtype=torch.bool)
    generated[..., : h // 2, :] = True
    m = latent_mask(generated, model, image_size=UPLOAD, working_size=working)
    assert torch.equal(m.cpu(), generated)  # a mask made at latent resolution is kept as it is
    with pytest.raises(bdia.InvalidParameter, match="aspect ratio"):
        latent_mask(Image.new("L", (45, 77), 255), model, image_size=UPLOAD, working_size=working)


def test_an_inversion_file_without_its_source_edits_as_before(model, upload, inversion):
    """Version 1 files (no ``source``) still load; they edit at the model's native size, cropped."""
    old = bdia.invert_latent(
        model,
        imaging.encode(model, imaging.fit_to_model(upload, model.height, model.width)),
        inversion.params,
    )
    tensors = {"z_hi": old.z_hi, "z_lo": old.z_lo, "z0": old.z0, "trajectory": old.trajectory}  # as version 1 wrote
    meta = {**old.metadata(), "format": "bdia.inversion/1"}
    loaded = Inversion.from_bytes(save({k: v.clone() for k, v in tensors.items()}, metadata=meta))
    assert loaded.source is None and loaded.source_size is None
    regen = bdia.regenerate(model, loaded)
    assert regen.image.size == (model.width, model.height) and regen.psnr is None
    edit = bdia.regenerate(model, loaded, "a green triangle", mask=_left_mask(), image_size=UPLOAD)
    assert edit.image.size == (model.width, model.height) == edit.mask_image.size


def test_the_cli_keeps_the_upload_size_and_saves_the_mask(tmp_path, upload, capsys):
    """`bdia edit --save-mask` writes the mask used (the upload's size) and reports the share it covers."""
    import json

    from bdia.cli import main

    image, inv, out, mask = (tmp_path / name for name in ("in.png", "inv.safetensors", "out.png", "mask.png"))
    upload.save(image)
    _left_mask().save(tmp_path / "user-mask.png")
    tiny = ["--device", "cpu", "--no-progress"]
    assert (
        main(["invert", str(image), "--model", "tiny-random", *tiny, "--steps", str(STEPS), "--output", str(inv)]) == 0
    )
    capsys.readouterr()
    edit = ["edit", str(inv), *tiny, "--output", str(out), "--save-mask", str(mask), "--json"]
    assert main([*edit, "--prompt", "a green triangle", "--mask", str(tmp_path / "user-mask.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = Image.open(mask)
    assert saved.size == UPLOAD == Image.open(out).size and report["mask"] == str(mask)
    inside = np.asarray(saved.convert("L")) > 0
    assert report["mask_fraction"] == pytest.approx(inside.mean()) and 0 < inside.mean() < 1
    assert (report["width"], report["height"]) == UPLOAD and report["working_width"] > report["working_height"]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB"))[~inside], np.asarray(upload)[~inside])

    mask.unlink()
    assert main([*edit[:-1]]) == 0  # a reconstruction: no mask, the upload itself, errors at both sizes
    summary = capsys.readouterr().out
    assert "not written" in summary and "at 77×45" in summary and not mask.exists()
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(upload))
    assert main(edit) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mask"] is None and report["mask_fraction"] is None and report["psnr"] is None
    assert report["reconstruction"] and report["exact"] and report["working_psnr"] > 0


def test_jobs_of_different_working_sizes_share_a_worker_batch(model, upload, inversion):
    """Two jobs in one batch layout whose images have different shapes: each gets its own network call
    (a worker must not fail both), and each gives the same bits as alone."""
    from bdia.batching import Lane, Layout, advance, drive
    from bdia.ops import regenerating

    portrait = bdia.invert(model, upload.transpose(Image.Transpose.ROTATE_90), "a gradient", steps=STEPS)
    assert portrait.z0.shape != inversion.z0.shape
    lanes = [
        Lane(regenerating(model, inversion, "a green triangle", mask=_left_mask(), layout=Layout(2, 0))),
        Lane(regenerating(model, portrait, "a green triangle", layout=Layout(2, 1))),
    ]
    while any(lane.live for lane in lanes):
        advance(model, lanes)
    assert all(lane.error is None for lane in lanes), [lane.error for lane in lanes]
    alone = [
        drive(model, regenerating(model, inversion, "a green triangle", mask=_left_mask(), layout=Layout(2, 0))),
        drive(model, regenerating(model, portrait, "a green triangle", layout=Layout(2, 1))),
    ]
    for lane, reference in zip(lanes, alone, strict=True):
        assert torch.equal(lane.result.z0, reference.z0)
        assert np.array_equal(np.asarray(lane.result.image), np.asarray(reference.image))
