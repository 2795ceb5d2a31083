"""Edit masks (``bdia.ops.latent_mask``): white = may change, any size with the image's aspect ratio,
transparent pixels keep the source."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import bdia
from bdia.ops import latent_mask


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_mask_of_another_aspect_ratio_is_refused(tiny_model):
    assert tiny_model.width == tiny_model.height == 32
    for size in ((32, 32), (256, 256), (33, 32), (31, 32)):  # any size, a pixel of rounding
        assert latent_mask(Image.new("L", size, 255), tiny_model).all()
    for size in ((64, 32), (35, 32), (32, 48)):
        with pytest.raises(bdia.InvalidParameter) as refused:
            latent_mask(Image.new("L", size, 255), tiny_model)
        message = str(refused.value)
        assert "\n" not in message and f"{size[0]}×{size[1]}" in message and "aspect ratio" in message
    with pytest.raises(bdia.InvalidParameter, match="aspect ratio"):
        latent_mask(torch.ones(8, 16), tiny_model)


def test_the_image_size_given_is_the_reference(tiny_model):
    """Inverting a 64×48 image crops it to the model's square; a 4:3 mask is cropped alike, so it fits."""
    for size in ((64, 48), (640, 480), (641, 480), (32, 32)):  # the image's ratio, or the model's
        latent_mask(Image.new("L", size, 255), tiny_model, image_size=(64, 48))
    with pytest.raises(bdia.InvalidParameter, match="the image is 64×48"):
        latent_mask(Image.new("L", (48, 64), 255), tiny_model, image_size=(64, 48))


def test_transparent_pixels_keep_the_source(tiny_model):
    clear_white = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    assert not latent_mask(clear_white, tiny_model).any()  # not "all white": nothing may change
    assert not latent_mask(_png(clear_white), tiny_model).any()  # the same as uploaded bytes
    half = clear_white.copy()
    half.paste((255, 255, 255, 255), (0, 0, 32, 16))  # opaque white on the top half
    m = latent_mask(_png(half), tiny_model)[0, 0]
    assert m[:4].all() and not m[4:].any()
    grey_alpha = Image.new("LA", (32, 32), (255, 0))
    assert not latent_mask(grey_alpha, tiny_model).any()
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.info["transparency"] = 1
    assert not latent_mask(_png(palette), tiny_model).any()
    assert latent_mask(Image.new("RGBA", (32, 32), (255, 255, 255, 255)), tiny_model).all()  # opaque: as before


def test_a_masked_edit_refuses_a_mask_of_another_aspect_ratio(tiny_model, test_image):
    inversion = bdia.invert(tiny_model, test_image, "a red square", steps=6)
    with pytest.raises(bdia.InvalidParameter, match="aspect ratio"):
        bdia.regenerate(tiny_model, inversion, "a green triangle", mask=Image.new("L", (64, 16), 255))
    mask = Image.new("L", test_image.size, 0)
    edit = bdia.regenerate(tiny_model, inversion, "a green triangle", mask=mask, image_size=test_image.size)
    assert torch.equal(edit.z0, inversion.lattice.decode(inversion.z0))  # all black: everything kept
    with pytest.raises(bdia.InvalidImage):
        bdia.regenerate(tiny_model, inversion, "x", mask=b"not an image")
