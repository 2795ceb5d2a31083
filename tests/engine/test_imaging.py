"""Images in and out: loading, fitting, pixel conventions (diffusers' VaeImageProcessor), VAE encode/decode."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from bdia.errors import InvalidImage, InvalidParameter
from bdia.imaging import changed_within, decode, encode, fit_to_model, load_image, psnr, to_image, to_tensor
from bdia.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", device="cpu")


def picture(width: int = 32, height: int = 32, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_load_image_from_bytes_path_and_pil(tmp_path):
    image = picture(40, 24)
    path = tmp_path / "image.png"
    path.write_bytes(png(image))
    for source in (png(image), path, str(path), image):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (40, 24)
        assert np.array_equal(np.asarray(loaded), np.asarray(image))


def test_load_image_converts_modes_to_rgb():
    for mode in ("RGBA", "L"):
        loaded = load_image(png(picture(mode=mode)))
        assert loaded.mode == "RGB" and loaded.size == (32, 32)


def test_load_image_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    picture(40, 20).save(buffer, "JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (20, 40)


def test_load_image_rejects_what_is_not_an_image(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    with pytest.raises(InvalidImage, match="not a readable image"):
        load_image(text)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        load_image(png(picture(64, 64))[:300])
    with pytest.raises(InvalidImage, match="not a readable image"):
        load_image(b"")
    with pytest.raises(InvalidImage, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImage, match="from a int"):
        load_image(42)


@pytest.mark.parametrize("size", [(97, 31), (31, 97), (33, 33), (64, 48), (8, 5)])
def test_fit_to_model_gives_the_model_size(size):
    assert fit_to_model(picture(*size), 32, 32).size == (32, 32)
    assert fit_to_model(picture(*size), 24, 40).size == (40, 24)


def test_fit_to_model_keeps_an_image_of_the_right_size_untouched():
    image = picture()
    assert np.array_equal(np.asarray(fit_to_model(image, 32, 32)), np.asarray(image))
    with pytest.raises(InvalidParameter):
        fit_to_model(image, 0, 32)


def test_pixel_conventions_match_diffusers():
    image = picture()
    processor = VaeImageProcessor(do_resize=False)
    x = to_tensor(image)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, processor.preprocess(image))
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.asarray(to_image(x)), np.asarray(image))  # exact for 8-bit images
    noisy = x + 0.01 * torch.randn_like(x)
    assert np.array_equal(np.asarray(to_image(noisy)), np.asarray(processor.postprocess(noisy, output_type="pil")[0]))
    assert np.asarray(to_image(torch.full((3, 2, 2), 5.0))).min() == 255  # clamped
    with pytest.raises(InvalidParameter):
        to_image(torch.zeros(2, 3, 4, 4))


def test_encode_is_the_posterior_mean_and_decode_inverts_its_shape(model):
    image = picture()
    z0 = encode(model, image)
    with torch.no_grad():
        expected = model.vae.encode(to_tensor(image)).latent_dist.mean * model.vae.config.scaling_factor
    assert z0.dtype == torch.float32 and z0.device.type == "cpu" and z0.shape == (1, *model.latent_shape)
    assert torch.equal(z0, expected)
    assert torch.equal(encode(model, image), z0)  # never a sample
    out = decode(model, z0.double())
    assert out.mode == "RGB" and out.size == (model.width, model.height)
    with torch.no_grad():
        pixels = model.vae.decode(z0 / model.scaling_factor).sample
    assert np.array_equal(np.asarray(out), np.asarray(to_image(pixels)))
    with pytest.raises(InvalidImage, match="multiple of 4"):
        encode(model, picture(30, 32))


def test_pixel_space_encode_decode_is_lossless():
    model = load_model("tiny-random-pixel", device="cpu")
    image = picture(seed=3)
    z0 = encode(model, image)
    assert torch.equal(z0, to_tensor(image)) and z0.shape == (1, *model.latent_shape)
    assert np.array_equal(np.asarray(decode(model, z0.double())), np.asarray(image))


def test_psnr():
    image = picture()
    assert psnr(image, image.copy()) == math.inf
    shifted = Image.fromarray(np.clip(np.asarray(image).astype(int) + 1, 0, 255).astype(np.uint8))
    flat = Image.new("RGB", (32, 32), (10, 20, 30))
    assert psnr(flat, Image.new("RGB", (32, 32), (11, 21, 31))) == pytest.approx(20 * math.log10(255))
    assert 40 < psnr(image, shifted) < math.inf
    with pytest.raises(InvalidParameter, match="sizes"):
        psnr(image, picture(16, 16))


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    import io

    import numpy as np
    from PIL import Image

    from bdia.imaging import load_image

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    data = io.BytesIO()
    Image.fromarray(ramp).save(data, "PNG")
    pixels = np.asarray(load_image(data.getvalue()))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # clipping at 255 would put the mean near 255


def test_changed_within_keeps_what_moved_beyond_the_tolerance_closes_holes_and_drops_specks():
    source = Image.new("RGB", (12, 12), (100, 100, 100))
    edited = np.asarray(source).copy()
    edited[2:6, 2:6] = (100, 220, 100)  # an edited object (one channel moved)
    edited[3, 3] = 105  # a pixel of it within the tolerance: a hole, closed
    edited[9, 9:11] = 200  # a speck of two pixels
    edited[0, 0] = 112  # within the tolerance
    edited[1, 11] = 160  # outside the mask
    mask = np.full((12, 12), 255, np.uint8)
    mask[:, 11] = 0
    found = np.asarray(changed_within(Image.fromarray(edited), source, Image.fromarray(mask, "L"), 12)) > 0
    expected = np.zeros((12, 12), bool)
    expected[2:6, 2:6] = True  # the object, hole closed
    assert (found == expected).all()
    assert changed_within(Image.fromarray(edited), source, Image.fromarray(mask, "L"), 0).tobytes() == mask.tobytes()
