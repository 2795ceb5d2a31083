"""The ``bdia`` command line: the engine's sample, invert, edit and roundtrip, plus the service's commands.

The service's subcommands (serve, worker, webhooks, demo) are not imported from here: each
package that provides one registers it under the ``bdia.commands`` entry-point group
(pyproject.toml), and this module finds it by name. Bad input ends with one line on stderr and a
non-zero exit; progress bars (the engine's and the model loaders') appear only when stderr is a
terminal; ``--json`` prints one JSON object on stdout instead of the human summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from . import __version__
from .errors import BdiaError
from .params import default_model, one_line

COMMANDS_GROUP = "bdia.commands"
"""The entry-point group of the service's subcommands: ``name = "module:main"``, ``main(argv) -> int``."""
ENGINE_MODULES = frozenset({"torch", "diffusers", "transformers", "safetensors", "accelerate"})
"""What the ``engine`` extra installs: an engine command that cannot import one of them says so in one line."""
SOURCE_SIZE = "source_size"
"""Metadata ``bdia invert`` adds to its file: the source image's ``WIDTHxHEIGHT`` (masks are checked against it)."""


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A progress callback drawing a tqdm bar per stage, or ``None`` when not attached to a terminal."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(p: Any) -> None:
        bar = bars.get(p.stage)
        if bar is None:
            bar = bars[p.stage] = tqdm(total=p.total, desc=p.stage, unit="nfe", leave=False, file=sys.stderr)
        bar.update(p.step - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def _load(args: argparse.Namespace, name: str | None = None) -> Any:
    """Load the model and put this process in exact mode (deterministic kernels) before any network call."""
    from .models import load_model
    from .numerics import configure_determinism

    model = load_model(name or args.model, device=args.device, dtype=args.dtype, progress=args.progress)
    configure_determinism(model)
    return model


def _save_image(image: Any, path: str) -> None:
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    image.save(out)


def _report(args: argparse.Namespace, summary: str, result: dict[str, Any]) -> None:
    """The command's outcome on stdout: one JSON object with ``--json``, else the one-line summary."""
    print(json.dumps(result) if args.json else summary)


def _atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


def cmd_sample(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from .ops import sample

    model = _load(args)
    with progress_bar(args.progress) as callback:
        result = sample(
            model,
            args.prompt,
            seed=args.seed,
            steps=args.steps,
            gamma=args.gamma,
            guidance_scale=args.guidance,
            negative_prompt=args.negative_prompt,
            height=args.height,
            width=args.width,
            exact=args.exact,
            state_dtype=args.state_dtype,
            callback=callback,
        )
    _save_image(result.image, args.output)
    if args.save_latent:
        z0 = result.z0.to(model.dtype).cpu().contiguous()
        chosen = model.defaults.sampling(steps=args.steps, gamma=args.gamma, guidance_scale=args.guidance)
        meta = {
            "model": model.name,
            "prompt": args.prompt,
            "seed": str(args.seed),
            **{name: str(value) for name, value in chosen.items()},
        }
        _atomic_write(args.save_latent, save({"z0": z0}, metadata=meta))
    report = {
        "output": args.output,
        "latent": args.save_latent,
        "model": model.name,
        "width": result.image.width,
        "height": result.image.height,
        "nfe": result.nfe,
        "seconds": result.seconds,
    }
    _report(args, f"wrote {args.output} ({result.nfe} NFE, {result.seconds:.2f} s)", report)
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from safetensors.torch import load, save

    from .imaging import load_image
    from .inversion import read_metadata
    from .ops import invert

    source = Path(args.image)
    if not source.is_file():
        raise BdiaError(f"no such image file: {args.image}")
    picture = load_image(source)
    model = _load(args)
    with progress_bar(args.progress) as callback:
        inversion = invert(
            model,
            picture,
            args.prompt,
            steps=args.steps,
            strength=args.strength,
            guidance_scale=args.guidance,
            gamma=args.gamma,
            exact=args.exact,
            method=args.method,
            negative_prompt=args.negative_prompt,
            callback=callback,
        )
    # The source's size rides along in the file's metadata, so that `bdia edit --mask` can check the mask against it.
    data = inversion.to_bytes()
    metadata = {**read_metadata(data), SOURCE_SIZE: f"{picture.width}x{picture.height}"}
    _atomic_write(args.output, save(load(data), metadata=metadata))
    summary = (
        f"wrote {args.output} (level {inversion.level}, {inversion.nfe} NFE, {inversion.seconds:.2f} s, "
        f"latent std {inversion.latent_std:.3f}, fingerprint {inversion.fingerprint_id})"
    )
    report = {
        "output": args.output,
        "model": model.name,
        "level": inversion.level,
        "nfe": inversion.nfe,
        "seconds": inversion.seconds,
        "latent_std": inversion.latent_std,
        "fingerprint_id": inversion.fingerprint_id,
        "source_width": picture.width,
        "source_height": picture.height,
        "params": inversion.params.model_dump(),
    }
    _report(args, summary, report)
    return 0


def _source_size(data: bytes) -> tuple[int, int] | None:
    """The source image's (width, height) a file of ``bdia invert`` records; None for other inversion files."""
    from .inversion import read_metadata

    try:
        width, height = read_metadata(data)[SOURCE_SIZE].split("x")
        return int(width), int(height)
    except (KeyError, TypeError, ValueError):
        return None


def _edit_params(args: argparse.Namespace):
    """The ``EditParams`` of the control flags given (the rest keep their defaults); one-line errors."""
    from .params import EditParams

    fields: dict[str, Any] = {
        "control": args.control,
        "cross_fraction": args.cross_fraction,
        "self_fraction": args.self_fraction,
        "blend_words": args.blend,
        "mask_mode": args.mask_mode,
        "mask_threshold": args.mask_threshold,
        "keep_unchanged": False if args.no_keep_unchanged else None,
        "restart_removed": False if args.no_restart_removed else None,
        "unchanged_tolerance": args.unchanged_tolerance,
    }
    if args.reweight:
        reweight = {}
        for item in args.reweight:
            word, _, factor = item.rpartition("=")
            try:
                reweight[word] = float(factor)
            except ValueError:
                raise BdiaError(f"--reweight takes WORD=FACTOR, got {item!r}") from None
        fields["reweight"] = reweight
    return EditParams.create(**{k: v for k, v in fields.items() if v is not None})


def cmd_edit(args: argparse.Namespace) -> int:
    from .inversion import Inversion
    from .ops import regenerate

    source = Path(args.inversion)
    if not source.is_file():
        raise BdiaError(f"no such inversion file: {args.inversion}")
    data = source.read_bytes()
    inversion = Inversion.from_bytes(data)
    params = inversion.params
    model = _load(args, args.model or params.model)
    with progress_bar(args.progress) as callback:
        result = regenerate(
            model,
            inversion,
            args.prompt,
            guidance_scale=args.guidance,
            negative_prompt=args.negative_prompt,
            mask=args.mask,
            image_size=_source_size(data),
            gamma=args.gamma,
            edit=_edit_params(args),
            callback=callback,
        )
    _save_image(result.image, args.output)
    if args.save_mask and result.mask_image is not None:
        _save_image(result.mask_image, args.save_mask)
    # Only a reconstruction (nothing changed) has a source to compare with; an edit's distance from it means nothing.
    reconstruction = (
        args.mask is None
        and args.prompt in (None, params.prompt)
        and args.guidance in (None, params.guidance_scale)
        and args.negative_prompt in (None, params.negative_prompt)
        and args.gamma in (None, params.gamma)
    )
    working = result.image if result.working_image is None else result.working_image
    size = f"{result.image.width}×{result.image.height}"
    summary = f"wrote {args.output} ({size}, {result.nfe} NFE, {result.seconds:.2f} s"
    report: dict[str, Any] = {
        "output": args.output,
        "model": model.name,
        "width": result.image.width,
        "height": result.image.height,
        "working_width": working.width,
        "working_height": working.height,
        "nfe": result.nfe,
        "seconds": result.seconds,
        "reconstruction": reconstruction,
        "fingerprint_match": result.fingerprint_match,
        "mask": args.save_mask if result.mask_image is not None else None,
        "mask_fraction": result.mask_fraction,
    }
    if result.mask_fraction is not None:
        summary += f"; mask covers {result.mask_fraction:.1%}" + (f", wrote {args.save_mask}" if args.save_mask else "")
    elif args.save_mask:
        summary += f"; no edit mask used, {args.save_mask} not written"
    if reconstruction:
        exactness = "exact" if result.exact else "near-exact" if not result.fingerprint_match else "float"
        summary += f"; latent max |error| vs source {result.latent_max_abs_error:.3g}, {exactness}"
        report.update(latent_max_abs_error=result.latent_max_abs_error, exact=result.exact)
        if result.psnr is not None:  # the errors at the upload's size and at the working size (inf → null)
            psnr, working_psnr = (None if v == float("inf") else v for v in (result.psnr, result.working_psnr))
            summary += f"; PSNR vs source {_db(psnr)} at {size}"
            summary += f", {_db(working_psnr)} at {working.width}×{working.height}"
            report.update(psnr=psnr, working_psnr=working_psnr)
    _report(args, summary + ")", report)
    return 0


def _db(value: float | None) -> str:
    return "∞ dB (identical)" if value is None else f"{value:.2f} dB"


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from .ops import roundtrip

    model = _load(args)
    with progress_bar(args.progress) as callback:
        report = roundtrip(
            model,
            method=args.method,
            steps=args.steps,
            gamma=args.gamma,
            exact=args.exact,
            state_dtype=args.state_dtype,
            seed=args.seed,
            prompt=args.prompt,
            guidance_scale=args.guidance,
            callback=callback,
        )
    report["model"] = model.name
    _report(args, "\n".join(f"{key:>16}: {value}" for key, value in report.items()), report)
    return 0


def _model_options(p: argparse.ArgumentParser, *, required_default: bool = True) -> None:
    p.add_argument(
        "--model",
        default=default_model() if required_default else None,
        help="tiny-random, shapes, a local diffusers folder or a hub id",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1… (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="network dtype: float32, float16, bfloat16")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=sys.stderr.isatty(),
        help="never draw progress bars (they are drawn only when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _exact_option(p: argparse.ArgumentParser, default: bool | None) -> None:
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="fixed-point state for γ = 1 (bit-exact round trip); float64 state otherwise"
        + (" (default: the model's)" if default is None else ""),
    )


MODEL_DEFAULT = "default: the model's (its folder's bdia_defaults.json, else built in)"
"""Said of each setting whose default is the model's (``bdia.params.ModelDefaults``)."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line on stderr (exit 2); the usage itself is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="bdia",
        description="Lossless image editing by exact diffusion inversion (BDIA): the engine's sample, invert, "
        "edit and roundtrip, and the service's commands.",
    )
    parser.add_argument("--version", action="version", version=f"bdia {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate an image from noise")
    _model_options(p)
    p.add_argument("--prompt", default="")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=None, help=MODEL_DEFAULT)
    p.add_argument("--gamma", type=float, default=None, help=f"0 = plain DDIM, Euler for SD 3/Flux ({MODEL_DEFAULT})")
    p.add_argument("--guidance", type=float, default=None, help=MODEL_DEFAULT + "; Flux: its distilled guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--state-dtype", choices=("float64", "float32"), default="float64")
    _exact_option(p, False)
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--save-latent", default=None, help="safetensors file for z0, [1, C, h, w] (Flux: unpacked)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("invert", help="invert an image into its exact latent pair")
    _model_options(p)
    p.add_argument("image")
    p.add_argument("--prompt", default="")
    p.add_argument("--negative-prompt", default=None, help=MODEL_DEFAULT)
    p.add_argument("--steps", type=int, default=None, help=MODEL_DEFAULT)
    p.add_argument("--strength", type=float, default=None, help=MODEL_DEFAULT)
    p.add_argument("--guidance", type=float, default=None, help=MODEL_DEFAULT)
    p.add_argument("--gamma", type=float, default=None, help=MODEL_DEFAULT)
    p.add_argument("--method", choices=("bdia", "ddim", "edict"), default=None, help=MODEL_DEFAULT)
    _exact_option(p, None)
    p.add_argument("--output", required=True, help="safetensors file for the inversion")
    p.set_defaults(handler=cmd_invert)

    p = sub.add_parser("edit", help="regenerate an inversion under a new prompt")
    _model_options(p, required_default=False)
    p.add_argument("inversion", help="a file written by `bdia invert`")
    p.add_argument("--prompt", default=None, help="the edit prompt (default: the source prompt)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance", type=float, default=None, help="default: the inversion's")
    p.add_argument(
        "--mask",
        default=None,
        help="image, white = may change, elsewhere the source is kept; any size with the image's aspect ratio",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="the regeneration's γ (default: the inversion's); < 1 damps colour casts in edits",
    )
    p.add_argument(
        "--control",
        choices=("none", "swap", "cross", "cross+self"),
        default=None,
        help="attention control from the exact source branch (default: cross)",
    )
    p.add_argument("--cross-fraction", type=float, default=None, help="share of steps with cross-attention injection")
    p.add_argument("--self-fraction", type=float, default=None, help="share of steps with self-attention injection")
    p.add_argument("--reweight", action="append", metavar="WORD=FACTOR", help="scale a word's attention (repeatable)")
    p.add_argument("--blend", action="append", metavar="WORD", help="a word whose attention makes the mask (repeated)")
    p.add_argument(
        "--mask-mode",
        choices=("auto", "attention", "noise", "none"),
        default=None,
        help="the automatic edit mask (default: auto); none turns blending off. --mask gives one instead",
    )
    p.add_argument(
        "--mask-threshold", type=float, default=None, help="attention-map level of the mask (default: Otsu's)"
    )
    p.add_argument(
        "--no-keep-unchanged",
        action="store_true",
        help="let the automatic mask cover the objects of unchanged phrases too",
    )
    p.add_argument(
        "--no-restart-removed",
        action="store_true",
        help="do not regenerate a deleted phrase's region from fresh noise (it then starts from the inversion)",
    )
    p.add_argument(
        "--unchanged-tolerance",
        type=int,
        default=None,
        metavar="LEVELS",
        help="pixels of the mask the edit changed by at most this much (0-255) keep the source's value (default: 12)",
    )
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument(
        "--save-mask",
        default=None,
        metavar="PNG",
        help="write the edit mask used (the output's size, white = changed); nothing when the edit used none",
    )
    p.set_defaults(handler=cmd_edit)

    p = sub.add_parser("roundtrip", help="invert and regenerate a latent, report the error")
    _model_options(p)
    p.add_argument("--method", choices=("bdia", "ddim", "edict"), default=None, help=MODEL_DEFAULT)
    p.add_argument("--steps", type=int, default=None, help=MODEL_DEFAULT)
    p.add_argument("--gamma", type=float, default=None, help=MODEL_DEFAULT)
    p.add_argument("--guidance", type=float, default=None, help=MODEL_DEFAULT)
    p.add_argument("--prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dtype", choices=("float64", "float32"), default=None, help=MODEL_DEFAULT)
    _exact_option(p, None)
    p.set_defaults(handler=cmd_roundtrip)

    for command in service_commands():
        p = sub.add_parser(
            command.name, help=f"the service's {command.name} (bdia {command.name} --help)", add_help=False
        )
        p.set_defaults(handler=command, passthrough=True)
    return parser


def service_commands() -> list[EntryPoint]:
    """The subcommands installed packages register under ``bdia.commands``, by name."""
    return sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name)


def run_engine_command(args: argparse.Namespace) -> int:
    """Run one of the engine's subcommands; a missing engine dependency is named in one line."""
    try:
        return args.handler(args)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in ENGINE_MODULES:
            raise
        raise BdiaError(
            f"'bdia {args.command}' needs the engine extra ({missing} is not installed): pip install 'bdia[engine]'"
        ) from None


def run_service_command(command: EntryPoint, argv: list[str]) -> int:
    """Load a registered subcommand and run it; a missing optional dependency is named in one line."""
    try:
        handler = command.load()
    except ModuleNotFoundError as exc:
        extra = "worker" if command.name == "worker" else "api"
        raise BdiaError(
            f"'bdia {command.name}' needs the {extra} extra ({exc.name} is not installed): pip install 'bdia[{extra}]'"
        ) from None
    return handler(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "passthrough", False):
            return run_service_command(args.handler, rest)
        return run_engine_command(args)
    except ValidationError as exc:  # a service's settings may hold secrets: name the field, not its value
        print(f"bdia: error: {one_line(exc, inputs=not getattr(args, 'passthrough', False))}", file=sys.stderr)
        return 2
    except (BdiaError, OSError, ValueError) as exc:
        print(f"bdia: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bdia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
