"""The ``bdia`` command line: the engine's sample, invert, edit and roundtrip, plus the service's commands.

The service's subcommands (serve, worker, webhooks, demo) are not imported from here: each
package that provides one registers it under the ``bdia.commands`` entry-point group
(pyproject.toml), and this module finds it by name. Bad input ends with one line on stderr and a
non-zero exit; progress bars appear only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import BdiaError
from .params import default_model, one_line

COMMANDS_GROUP = "bdia.commands"
"""The entry-point group of the service's subcommands: ``name = "module:main"``, ``main(argv) -> int``."""


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

    model = load_model(name or args.model, device=args.device, dtype=args.dtype)
    configure_determinism(model)
    return model


def _save_image(image: Any, path: str) -> None:
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    image.save(out)


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
        meta = {
            "model": model.name,
            "prompt": args.prompt,
            "seed": str(args.seed),
            "steps": str(args.steps),
            "gamma": str(args.gamma),
            "guidance_scale": str(args.guidance),
        }
        _atomic_write(args.save_latent, save({"z0": z0}, metadata=meta))
    print(f"wrote {args.output} ({result.nfe} NFE, {result.seconds:.2f} s)")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from .ops import invert

    source = Path(args.image)
    if not source.is_file():
        raise BdiaError(f"no such image file: {args.image}")
    model = _load(args)
    with progress_bar(args.progress) as callback:
        inversion = invert(
            model,
            source,
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
    _atomic_write(args.output, inversion.to_bytes())
    print(
        f"wrote {args.output} (level {inversion.level}, {inversion.nfe} NFE, {inversion.seconds:.2f} s, "
        f"latent std {inversion.latent_std:.3f}, fingerprint {inversion.fingerprint_id})"
    )
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .inversion import Inversion
    from .ops import regenerate

    source = Path(args.inversion)
    if not source.is_file():
        raise BdiaError(f"no such inversion file: {args.inversion}")
    inversion = Inversion.from_bytes(source.read_bytes())
    model = _load(args, args.model or inversion.params.model)
    with progress_bar(args.progress) as callback:
        result = regenerate(
            model,
            inversion,
            args.prompt,
            guidance_scale=args.guidance,
            negative_prompt=args.negative_prompt,
            mask=args.mask,
            gamma=args.gamma,
            callback=callback,
        )
    _save_image(result.image, args.output)
    exactness = "exact" if result.exact else "near-exact" if not result.fingerprint_match else "float"
    print(
        f"wrote {args.output} ({result.nfe} NFE, {result.seconds:.2f} s; "
        f"latent max |error| vs source {result.latent_max_abs_error:.3g}, {exactness})"
    )
    return 0


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
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")
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
        help="never draw progress bars",
    )


def _exact_option(p: argparse.ArgumentParser, default: bool) -> None:
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="fixed-point state for γ = 1 (bit-exact round trip); float64 state otherwise",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bdia", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate an image from noise")
    _model_options(p)
    p.add_argument("--prompt", default="")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--gamma", type=float, default=1.0, help="0 = plain DDIM")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--state-dtype", choices=("float64", "float32"), default="float64")
    _exact_option(p, False)
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--save-latent", default=None, help="safetensors file for z0 (the UNet latent)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("invert", help="invert an image into its exact latent pair")
    _model_options(p)
    p.add_argument("image")
    p.add_argument("--prompt", default="")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--method", choices=("bdia", "ddim", "edict"), default="bdia")
    _exact_option(p, True)
    p.add_argument("--output", required=True, help="safetensors file for the inversion")
    p.set_defaults(handler=cmd_invert)

    p = sub.add_parser("edit", help="regenerate an inversion under a new prompt")
    _model_options(p, required_default=False)
    p.add_argument("inversion", help="a file written by `bdia invert`")
    p.add_argument("--prompt", default=None, help="the edit prompt (default: the source prompt)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance", type=float, default=None, help="default: the inversion's")
    p.add_argument("--mask", default=None, help="image: white = may change, elsewhere the source is kept")
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="the regeneration's γ (default: the inversion's); < 1 damps colour casts in edits",
    )
    p.add_argument("--output", required=True, help="PNG to write")
    p.set_defaults(handler=cmd_edit)

    p = sub.add_parser("roundtrip", help="invert and regenerate a latent, report the error")
    _model_options(p)
    p.add_argument("--method", choices=("bdia", "ddim", "edict"), default="bdia")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dtype", choices=("float64", "float32"), default="float64")
    _exact_option(p, True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
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
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "passthrough", False):
            return run_service_command(args.handler, rest)
        return args.handler(args)
    except ValidationError as exc:
        print(f"bdia: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (BdiaError, OSError, ValueError) as exc:
        print(f"bdia: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bdia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
