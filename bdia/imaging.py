"""Images in and out: loading, fitting to the model, pixels ↔ tensors ↔ latents, masks at the upload's size, PSNR.

Pixel conventions follow diffusers' VaeImageProcessor, so results compare with its pipelines.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import InvalidImage, InvalidParameter
from .models import DiffusionModel


def load_image(source: bytes | str | Path | Image.Image) -> Image.Image:
    """An RGB image from bytes, a file or a PIL image, upright per its EXIF orientation."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            what, stream = "the uploaded data", io.BytesIO(bytes(source))
        elif isinstance(source, (str, Path)):
            what, stream = f"file {str(source)!r}", source
        else:
            raise InvalidImage(f"cannot read an image from a {type(source).__name__}")
        try:
            image = Image.open(stream)
            image.load()
        except FileNotFoundError as exc:
            raise InvalidImage(f"{what} does not exist") from exc
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"{what} is not a readable image ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImage(f"{what} is a truncated or corrupt image ({exc})") from exc
    try:
        return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"cannot convert the image to RGB ({exc})") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, scaling 16- and 32-bit integer greyscale down to 8 bits (PIL's ``convert`` would clip at 255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16).astype(np.float64)
        top = 65535.0 if image.mode != "I" or wide.max() <= 65535 else float(wide.max())
        image = Image.fromarray(np.round(wide * (255.0 / top)).astype(np.uint8), "L")
    return image.convert("RGB")


def fit_to_model(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize the short side to cover height×width (Lanczos), then center-crop to exactly that size.

    An image already of that size is returned as is: no resampling, nothing lost.
    """
    if height < 1 or width < 1:
        raise InvalidParameter(f"target size must be positive, got {height}×{width}")
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))


def size_multiple(model: DiffusionModel) -> int:
    """What each side of a working size must be a multiple of: the latent factor × the UNet's downsampling.

    The UNet halves the latent once per block after the first, so a side that is not a multiple of
    2^(blocks − 1) would be padded and cropped inside the network.
    """
    if hasattr(model.conditioner, "patch_size"):  # flow transformers: latent cells per token (bdia.flow)
        return model.vae_scale_factor * model.conditioner.patch_size(model)
    blocks = len(model.unet.config.block_out_channels)
    return model.vae_scale_factor * 2 ** (blocks - 1)


def working_size(model: DiffusionModel, size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) an image of ``size`` (width, height) is edited at: its aspect ratio, closest.

    Within the model's pixel budget (native height × width), each side a multiple of ``size_multiple``:
    of the heights that allow it, the one whose widest width gives the aspect ratio nearest to the
    image's (in log ratio), larger areas first on ties. A square image gets the model's native size.
    """
    width, height = size
    if width < 1 or height < 1:
        raise InvalidParameter(f"image size must be positive, got {width}×{height}")
    step, budget = size_multiple(model), model.height * model.width
    target = math.log(width / height)
    best: tuple[float, int, tuple[int, int]] | None = None
    for h in range(step, budget // step + 1, step):
        w = budget // h // step * step
        if w < step:
            break
        key = (round(abs(math.log(w / h) - target), 12), -w * h, (w, h))
        if best is None or key < best:
            best = key
    assert best is not None  # the native size itself always fits
    return best[2]


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` (width, height), Lanczos, no cropping; one already of that size is returned as is."""
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), Image.Resampling.LANCZOS)


def fit_to_working(model: DiffusionModel, image: Image.Image) -> Image.Image:
    """The image at its working size (``working_size``): resized whole, its aspect ratio kept, nothing cut."""
    return resize(image, working_size(model, image.size))


MASK_DILATION = 1
"""Latent cells a mask grows by before the upload's pixels are pasted back outside it: the VAE decoder
(and the resampling to the upload's size) spread a changed cell's effect about that far."""


def mask_image(mask: torch.Tensor, size: tuple[int, int], *, dilation: int = MASK_DILATION) -> Image.Image:
    """A latent mask (boolean [1, 1, h, w], True = may change) as an "L" image of ``size``: white = changed.

    The mask is dilated by ``dilation`` cells, then resized (bilinear) with every pixel it reaches made
    white: the region where a result may differ from its source (``paste_outside`` keeps the rest).
    """
    m = mask.detach().to("cpu", torch.float32).reshape(1, 1, *mask.shape[-2:])
    if dilation > 0:
        m = torch.nn.functional.max_pool2d(m, 2 * dilation + 1, stride=1, padding=dilation)
    cells = Image.fromarray((m[0, 0].numpy() > 0).astype(np.uint8) * 255, "L")
    if cells.size == tuple(size):
        return cells
    return cells.resize(tuple(size), Image.Resampling.BILINEAR).point(lambda v: 255 if v else 0)


def paste_outside(edited: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """``edited`` inside the white of ``mask``, ``source``'s own pixels (bit for bit) everywhere else."""
    return Image.composite(
        edited.convert("RGB"), source.convert("RGB"), mask.convert("L").point(lambda v: 255 if v else 0)
    )


#: Changed pixels with at most this many changed pixels in their 5 × 5 window (themselves included) are specks.
SPECK = 4


def changed_within(edited: Image.Image, source: Image.Image, mask: Image.Image, tolerance: int) -> Image.Image:
    """The part of ``mask`` where ``edited`` differs from ``source``: the pixels some channel of which moved by
    more than ``tolerance`` levels (0–255), less isolated specks (``SPECK``), with holes and gaps of a pixel
    closed (a 3 × 3 closing) and kept within ``mask``. ``tolerance`` 0 returns ``mask`` itself."""
    if tolerance <= 0:
        return mask
    inside = np.asarray(mask.convert("L")) > 0
    diff = np.abs(np.asarray(edited.convert("RGB"), np.int16) - np.asarray(source.convert("RGB"), np.int16))
    changed = (diff.max(-1) > tolerance) & inside
    window = np.pad(changed.astype(np.int32), 2).cumsum(0).cumsum(1)
    window = np.pad(window, ((1, 0), (1, 0)))
    counts = window[5:, 5:] - window[:-5, 5:] - window[5:, :-5] + window[:-5, :-5]  # changed pixels per 5 × 5
    core = Image.fromarray((changed & (counts > SPECK)).astype(np.uint8) * 255, "L")
    closed = np.asarray(core.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))) > 0
    return Image.fromarray((closed & inside).astype(np.uint8) * 255, "L")


def covered(mask: Image.Image) -> float:
    """The fraction of a mask image's pixels that are white (may change)."""
    return float(np.count_nonzero(np.asarray(mask.convert("L")))) / (mask.width * mask.height)


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes of an image: lossless, the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_tensor(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float32 in [-1, 1] (VaeImageProcessor's preprocess)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()[None] * 2.0 - 1.0


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A PIL image from [1, 3, H, W] or [3, H, W] in [-1, 1]: clamped and rounded (VaeImageProcessor's postprocess)."""
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise InvalidParameter(f"expected one RGB image [1, 3, H, W], got shape {tuple(tensor.shape)}")
    pixels = (tensor / 2 + 0.5).clamp(0, 1).detach().cpu().permute(1, 2, 0).float().numpy()
    return Image.fromarray((pixels * 255).round().astype("uint8"))


def encode(model: DiffusionModel, image: Image.Image) -> torch.Tensor:
    """z_0: the VAE posterior MEAN × scaling factor (never a sample), or the pixels in pixel space.

    Returns float32 on the CPU, [1, C, h, w]; the caller casts it to the state dtype.
    """
    x = to_tensor(image)
    factor = model.vae_scale_factor
    if x.shape[2] % factor or x.shape[3] % factor:
        raise InvalidImage(f"image size {image.width}×{image.height} is not a multiple of {factor}")
    if model.vae is None:
        return x
    with torch.no_grad():
        mean = model.vae.encode(x.to(model.device, model.dtype)).latent_dist.mean
    if model.shift_factor:  # SD 3, Flux: z = (mean − shift)·scaling, as their pipelines encode
        mean = mean - model.shift_factor
    return (mean * model.scaling_factor).float().cpu()


def decode(model: DiffusionModel, z0: torch.Tensor) -> Image.Image:
    """The image of a latent z_0: z_0 / scaling factor through the VAE decoder in the model dtype."""
    if model.vae is None:
        return to_image(z0)
    with torch.no_grad():
        z = z0.to(model.device, model.dtype) / model.scaling_factor
        if model.shift_factor:  # SD 3, Flux: z / scaling + shift, as their pipelines decode
            z = z + model.shift_factor
        pixels = model.vae.decode(z, return_dict=False)[0]
    return to_image(pixels)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit RGB images of one size (inf when identical)."""
    if a.size != b.size:
        raise InvalidParameter(f"cannot compare images of sizes {a.size} and {b.size}")
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
SAMPLE_PROMPT = "a red circle and a blue square on a grey background"


def sample_image() -> Image.Image:
    """The bundled sample image (256 px; its caption is ``SAMPLE_PROMPT``)."""
    return load_image(SAMPLE_IMAGE)
