"""The `bdia` command line: real commands on the tiny model, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bdia
from bdia.cli import main

TINY = ["--model", "tiny-random", "--device", "cpu", "--no-progress"]


def test_invert_then_edit_then_reconstruct(tmp_path, test_image, capsys):
    image = tmp_path / "in.png"
    test_image.save(image)
    inv = tmp_path / "inv.safetensors"
    assert main(["invert", str(image), *TINY, "--prompt", "a red square", "--steps", "12", "--output", str(inv)]) == 0
    inversion = bdia.Inversion.from_bytes(inv.read_bytes())
    assert inversion.params.steps == 12 and inversion.z_hi.dtype == torch.int64

    assert (
        main(
            [
                "edit",
                str(inv),
                "--device",
                "cpu",
                "--no-progress",
                "--prompt",
                "a blue circle",
                "--output",
                str(tmp_path / "edit.png"),
            ]
        )
        == 0
    )
    assert main(["edit", str(inv), "--device", "cpu", "--no-progress", "--output", str(tmp_path / "same.png")]) == 0
    out = capsys.readouterr().out
    assert "vs source 0, exact" in out
    assert (tmp_path / "edit.png").exists()


def test_roundtrip_json_through_the_console_script():
    exe = Path(sys.executable).with_name("bdia")
    proc = subprocess.run(
        [str(exe), "roundtrip", *TINY, "--method", "bdia", "--steps", "10", "--seed", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("method", "steps", "gamma", "exact", "nfe", "max_abs_error", "rel_error", "bit_exact", "seconds"):
        assert key in report
    assert report["bit_exact"] is True and report["max_abs_error"] == 0.0 and report["nfe"] == 19


@pytest.mark.parametrize(
    "argv,message",
    [
        (["roundtrip", "--model", "no-such-model", "--device", "cpu"], "no-such-model"),
        (["roundtrip", *TINY, "--steps", "0"], "steps"),
        (["roundtrip", *TINY, "--steps", "-5"], "steps"),
        (["roundtrip", *TINY, "--steps", "10", "--gamma", "1.5"], "gamma"),
        (["roundtrip", *TINY, "--steps", "10", "--gamma", "0"], "gamma"),
        (["roundtrip", *TINY, "--steps", "50", "--gamma", "0.5", "--no-exact"], "amplifies"),
    ],
)
def test_bad_input_gives_one_line_and_non_zero_exit(argv, message, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bdia: error:") and message in err


def test_non_image_file_is_refused(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    assert main(["invert", str(text), *TINY, "--output", str(tmp_path / "inv.safetensors")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image" in err
    assert not (tmp_path / "inv.safetensors").exists()
    assert main(["invert", str(tmp_path / "missing.png"), *TINY, "--output", str(tmp_path / "i.st")]) != 0
    assert main(["edit", str(text), "--output", str(tmp_path / "e.png")]) != 0


def test_version_and_help_without_arguments(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"bdia {bdia.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bdia") and "roundtrip" in out


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["edit", "inv.safetensors", "--output", "x.png", "--control", "bogus"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("bdia edit: error: argument --control: invalid choice") and "--help" in err


def _one_json_object(out: str) -> dict:
    (line,) = out.strip().splitlines()
    return json.loads(line)


def test_every_command_with_a_result_prints_one_json_object(tmp_path, test_image, capsys):
    image = tmp_path / "in.png"
    test_image.save(image)
    sample = ["sample", *TINY, "--steps", "3", "--output", str(tmp_path / "s.png"), "--json"]
    assert main(sample) == 0
    assert _one_json_object(capsys.readouterr().out)["output"] == str(tmp_path / "s.png")

    inv = tmp_path / "inv.safetensors"
    invert = ["invert", str(image), *TINY, "--prompt", "a red square", "--steps", "6", "--output", str(inv)]
    assert main([*invert, "--json"]) == 0
    report = _one_json_object(capsys.readouterr().out)
    assert report["level"] == 6 and (report["source_width"], report["source_height"]) == test_image.size

    edit = ["edit", str(inv), "--device", "cpu", "--no-progress", "--json"]
    assert main([*edit, "--prompt", "a blue circle", "--output", str(tmp_path / "e.png")]) == 0
    report = _one_json_object(capsys.readouterr().out)
    assert report["reconstruction"] is False and "latent_max_abs_error" not in report  # meaningless for an edit
    assert main([*edit, "--output", str(tmp_path / "same.png")]) == 0
    report = _one_json_object(capsys.readouterr().out)
    assert report["reconstruction"] is True and report["latent_max_abs_error"] == 0.0 and report["exact"] is True

    assert main(["roundtrip", *TINY, "--steps", "4", "--json"]) == 0
    assert _one_json_object(capsys.readouterr().out)["bit_exact"] is True


def test_edit_reports_the_error_vs_source_only_for_a_reconstruction(tmp_path, test_image, capsys):
    image = tmp_path / "in.png"
    test_image.save(image)
    inv = tmp_path / "inv.safetensors"
    assert main(["invert", str(image), *TINY, "--prompt", "a red square", "--steps", "6", "--output", str(inv)]) == 0
    capsys.readouterr()
    edit = ["edit", str(inv), "--device", "cpu", "--no-progress", "--output", str(tmp_path / "out.png")]
    for change in (["--prompt", "a blue circle"], ["--guidance", "3"], ["--gamma", "0.5"]):
        assert main([*edit, *change]) == 0
        assert "vs source" not in capsys.readouterr().out, change
    assert main([*edit, "--prompt", "a red square"]) == 0  # the source prompt: a reconstruction
    assert "vs source 0, exact" in capsys.readouterr().out


def test_masks_are_checked_against_the_inverted_images_aspect_ratio(tmp_path, test_image, capsys):
    """The inversion holds its source: a mask of its aspect ratio (or the working size's) passes, another not."""
    from PIL import Image

    image = tmp_path / "in.png"
    test_image.save(image)  # 64×48, on a 32×32 model
    inv = tmp_path / "inv.safetensors"
    assert main(["invert", str(image), *TINY, "--steps", "6", "--output", str(inv)]) == 0
    edit = ["edit", str(inv), "--device", "cpu", "--no-progress", "--prompt", "x", "--output", str(tmp_path / "o.png")]
    for size in ((64, 48), (32, 24), (40, 24)):  # the source's ratio, at any size; or the working size (40×24)
        Image.new("L", size, 255).save(tmp_path / "m.png")
        assert main([*edit, "--mask", str(tmp_path / "m.png")]) == 0, capsys.readouterr().err
    for size in ((64, 16), (16, 16)):  # the model's square is no longer the image's shape: nothing is cropped
        Image.new("L", size, 255).save(tmp_path / "m.png")
        capsys.readouterr()
        assert main([*edit, "--mask", str(tmp_path / "m.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{size[0]}×{size[1]}" in err and "64×48" in err and "aspect" in err


def _bdia(*argv: str, prelude: str = "", **kwargs) -> subprocess.CompletedProcess:
    """``bdia ARGV`` in a fresh interpreter (stdout and stderr are pipes, not terminals), after ``prelude``."""
    code = f"import sys\n{prelude}\nfrom bdia.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


def test_no_loading_bars_when_stderr_is_not_a_terminal(tmp_path):
    out = str(tmp_path / "s.png")
    done = _bdia("sample", "--model", "shapes", "--device", "cpu", "--steps", "2", "--output", out)
    assert done.returncode == 0, done.stderr
    assert "Loading" not in done.stderr and "it/s" not in done.stderr, done.stderr
    # The switch is what keeps it away: asked for, transformers draws its bar on the same pipe.
    shown = subprocess.run(
        [sys.executable, "-c", "import bdia; bdia.load_model('shapes', device='cpu', progress=True)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0 and "Loading weights" in shown.stderr, shown.stderr


BLOCK_TORCH = """
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.parametrize("command", ["roundtrip", "sample", "invert", "edit"])
def test_engine_commands_without_the_engine_extra_name_it(command, tmp_path):
    given = tmp_path / "given"
    given.write_bytes(b"")
    argv = {"roundtrip": [], "sample": ["--output", "x.png"]}.get(command, [str(given), "--output", "out"])
    done = _bdia(command, *argv, prelude=BLOCK_TORCH, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"bdia: error: 'bdia {command}' needs the engine extra (torch is not installed): pip install 'bdia[engine]'"
    )
    assert done.stdout == ""
