"""``make demo`` / ``bdia demo``: the whole service on this machine, driven by the typed client.

Starts a local stack (``bdia.jobqueue.stack``: a private ``redis-server`` on a free port unless
``BDIA_REDIS_URL`` is set, the API and one worker with the default model); uploads a sample image;
edits it twice (the first edit inverts it, the second reuses the cached inversion); reconstructs it;
saves the PNGs; prints the timings and the round-trip error; and shuts everything down, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import uuid
from pathlib import Path

from bdia.client import BdiaClient
from bdia.jobqueue.stack import LocalStack, RedisMissing, StackFailed

SAMPLE = Path(__file__).resolve().parents[1] / "bdia" / "assets" / "sample.png"
SOURCE_PROMPT = "a red circle and a blue square on a grey background"
"""The sample's caption (``bdia.imaging.SAMPLE_PROMPT``, repeated here: the demo process needs no torch)."""
EDITS = (
    "a green circle and a blue square on a grey background",
    "a red circle and a blue triangle on a grey background",
)
STARTUP_TIMEOUT_S = 600


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 when every step worked)."""
    parser = argparse.ArgumentParser(prog="bdia demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="default: $BDIA_MODEL, else shapes when bundled, else tiny-random")
    parser.add_argument("--image", type=Path, help=f"image to edit (default: {SAMPLE.name}, made if missing)")
    parser.add_argument("--prompt", default=SOURCE_PROMPT, help="what the image shows")
    parser.add_argument("--edit", action="append", help="an edit prompt (give two; default: two examples)")
    parser.add_argument("--steps", type=int, help="inversion steps (default: the model's)")
    parser.add_argument("--strength", type=float, help="how far toward noise to invert (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance of the inversion and the edits (default: the model's)")
    parser.add_argument("--edit-gamma", type=float, help="the edits' own γ (1 = the inversion's; default: the model's)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where the PNGs go (default: out/)")
    args = parser.parse_args(argv)
    edits = (args.edit or list(EDITS)) + list(EDITS)
    from bdia.params import default_model  # torch-free

    model = args.model or default_model()
    args.out.mkdir(parents=True, exist_ok=True)
    given_prefix = os.environ.get("BDIA_KEY_PREFIX")
    stack = LocalStack(
        args.out / "logs",
        {"model": model, "models": model},
        prefix=given_prefix or f"bdia-demo-{uuid.uuid4().hex[:8]}",
        delete_keys=given_prefix is None,  # a prefix of the user's own is left as it is
        timeout_s=STARTUP_TIMEOUT_S,
    )
    try:
        print(f"starting the API and a worker loading {model!r} (logs in {stack.logs}/)…", flush=True)
        started = time.perf_counter()
        with stack, BdiaClient(stack.url, timeout=120) as client:
            where = f"{stack.redis_url}{' (private)' if stack.private_redis else ''}"
            print(f"Redis {where}; API {stack.url}; ready in {time.perf_counter() - started:.1f} s")
            given = {"steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance}
            settings = {name: value for name, value in given.items() if value is not None}
            return _drive(client, _sample(args.image), args.prompt, edits[:2], settings, args.edit_gamma, args.out)
    except (RedisMissing, StackFailed) as exc:
        print(f"bdia demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything was shut down", file=sys.stderr)
        return 130


def _drive(
    client: BdiaClient,
    image: bytes,
    prompt: str,
    edits: list[str],
    settings: dict[str, float],
    edit_gamma: float | None,
    out: Path,
) -> int:
    """The client's part: edit twice (the second reuses the cache), reconstruct, save, report. ``settings`` and
    ``edit_gamma`` are what the user gave; the service fills the rest from the model's defaults."""
    model = client.models().models[0]
    used = {**model.defaults, **settings}
    edit = {**model.defaults.get("edit", {}), **({"edit_gamma": edit_gamma} if edit_gamma is not None else {})}
    if "guidance_scale" in settings:  # the demo's guidance serves the edits too
        edit["guidance_scale"] = settings["guidance_scale"]
    shown = ("guidance_scale", "edit_gamma", "control", "mask_mode")
    print(
        f"model {model.name}: {model.width}×{model.height}; inversion: {used.get('steps')} steps, strength "
        f"{used.get('strength')}, guidance {used.get('guidance_scale')}; edits: "
        f"{', '.join(f'{k} {edit[k]}' for k in shown if edit.get(k) is not None)}; source prompt {prompt!r}"
    )
    (out / "source.png").write_bytes(image)
    timings: dict[str, float] = {}

    def run(label: str, submit) -> object:
        start = time.perf_counter()
        job = client.wait(submit(), on_progress=(lambda p: _progress(label, p)) if sys.stdout.isatty() else None)
        timings[label] = time.perf_counter() - start
        print(
            f"\r{label:<16} {timings[label]:7.2f} s   nfe {job.metrics['nfe']:>4}   "
            f"inversion cached: {str(job.metrics['inversion_cached']).lower()}"
        )
        return job

    first = run(
        "edit 1 (uploads)", lambda: client.edit_image(image, prompt, edits[0], edit_gamma=edit_gamma, **settings)
    )
    inversion_id = first.inversion_id
    guidance = settings.get("guidance_scale")
    second = run(
        "edit 2 (cached)", lambda: client.edit(inversion_id, edits[1], guidance_scale=guidance, edit_gamma=edit_gamma)
    )
    start = time.perf_counter()
    again = client.invert(image, prompt, **settings)
    print(f"re-upload        {time.perf_counter() - start:7.3f} s   answered from the cache: {again.cached}")
    reconstruction = run("reconstruction", lambda: client.reconstruct(inversion_id))

    for name, job in (("edit-1.png", first), ("edit-2.png", second), ("reconstruction.png", reconstruction)):
        (out / name).write_bytes(client.result(job.id))
    (out / "inversion.safetensors").write_bytes(client.latents(inversion_id))
    masks = []
    for index, job in enumerate((first, second), start=1):
        fraction = (job.result or {}).get("mask_fraction")
        if fraction is not None:  # the edit's mask: outside it every pixel is the upload's own
            (out / f"edit-{index}-mask.png").write_bytes(client.mask(job.id))
            masks.append(f"edit {index} changed {fraction:.0%} of the image (edit-{index}-mask.png)")
    result = reconstruction.result
    inversion = client.inversion(inversion_id)
    print(f"\nedits: {edits[0]!r} and {edits[1]!r}")
    for line in masks:
        print(f"{line}; every pixel outside its mask is the upload's own")
    print(f"cached edit took {timings['edit 2 (cached)'] / timings['edit 1 (uploads)']:.2f}× the uncached one")
    print(f"inversion {inversion_id}: latent std {inversion.latent_std:.3f}, fingerprint {inversion.fingerprint_id}")
    psnr = result.get("psnr")  # null when the pixels are identical (JSON has no infinity)
    pixels = "pixels identical to the upload" if psnr is None else f"pixel PSNR vs the upload {psnr:.2f} dB"
    print(
        f"round trip: latent max abs error {result['latent_max_abs_error']:g} "
        f"({'bit-exact' if result['exact'] else 'not exact'}; fingerprint match: {result['fingerprint_match']}), "
        f"{pixels}"
    )
    print(f"saved {', '.join(sorted(p.name for p in out.glob('*.*')))} in {out}/")
    return 0 if result["latent_max_abs_error"] == 0 or not result["fingerprint_match"] else 1


def _progress(label: str, p: object) -> None:
    print(f"\r{label:<16} {p.stage} {p.step}/{p.total}   ", end="", flush=True)  # type: ignore[attr-defined]


def _sample(path: Path | None) -> bytes:
    """The image to edit: the one given, the bundled sample, or one like it drawn here."""
    if path is not None:
        return path.read_bytes()
    if SAMPLE.exists():
        return SAMPLE.read_bytes()
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 88, 110, 168), fill=(220, 38, 38))
    draw.rectangle((146, 88, 226, 168), fill=(40, 90, 220))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
