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
