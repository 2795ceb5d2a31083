"""Per-model defaults: a model folder's ``bdia_defaults.json`` is read, checked, and used by the library and
the CLI wherever a parameter is left out; a bad file is one clear error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bdia
from bdia.cli import main
from bdia.errors import InvalidParameter
from bdia.models import load_model, tiny_random_pipeline
from bdia.params import DEFAULTS_FILE, ModelDefaults

DEFAULTS = {
    "steps": 7,
    "guidance_scale": 2.0,
    "edit": {"guidance_scale": 3.0, "edit_gamma": 0.5},
    "sample": {"steps": 3, "guidance_scale": 1.5, "gamma": 0.5},
}
CPU = ["--device", "cpu", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A saved tiny random pipeline (no defaults file yet)."""
    path = tmp_path_factory.mktemp("tiny-folder")
    tiny_random_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def with_defaults(folder: Path, tmp_path_factory) -> Path:
    """The same pipeline, with ``DEFAULTS`` in its ``bdia_defaults.json``."""
    path = tmp_path_factory.mktemp("tiny-defaults")
    for part in folder.iterdir():
        (path / part.name).symlink_to(part)
    (path / DEFAULTS_FILE).write_text(json.dumps(DEFAULTS))
    return path


@pytest.fixture(scope="module")
def model(with_defaults: Path):
    loaded = load_model(with_defaults, device="cpu")
    bdia.configure_determinism(loaded)
    return loaded


def test_a_folder_without_the_file_has_the_built_in_defaults(folder: Path) -> None:
    loaded = load_model(folder, device="cpu")
    assert loaded.defaults == ModelDefaults()
    assert loaded.info()["defaults"]["steps"] == 50 and loaded.info()["family"] == "stable-diffusion"


def test_the_file_is_read_and_reported(model) -> None:
    info = model.info()
    assert model.defaults.steps == 7 and model.defaults.gamma == 1.0  # what the file leaves out is built in
    assert info["defaults"]["edit"]["edit_gamma"] == 0.5 and info["defaults"]["sample"]["steps"] == 3
    assert (info["num_train_timesteps"], info["max_steps"]) == (1000, 999)  # leading spacing, offset 1
    assert (info["latent_factor"], info["family"]) == (4, "stable-diffusion")


def test_the_library_uses_the_model_defaults(model, test_image) -> None:
    inversion = bdia.invert(model, test_image, "a gradient")
    assert (inversion.params.steps, inversion.params.guidance_scale, inversion.nfe) == (7, 2.0, 7)
    assert bdia.invert(model, test_image, "a gradient", steps=4).params.steps == 4  # what is given wins
    assert bdia.sample(model, "a gradient").nfe == 3

    # An edit takes the model's edit defaults; a reconstruction keeps the inversion's settings.
    edit = bdia.regenerate(model, inversion, "a red gradient")
    spelled = bdia.regenerate(model, inversion, "a red gradient", guidance_scale=3.0, gamma=0.5)
    built_in = bdia.regenerate(model, inversion, "a red gradient", guidance_scale=2.0, gamma=1.0)
    assert torch.equal(edit.z0, spelled.z0) and not torch.equal(edit.z0, built_in.z0)
    assert bdia.regenerate(model, inversion).exact


def test_the_cli_uses_the_model_defaults(with_defaults: Path, tmp_path: Path, test_image, capsys) -> None:
    image = tmp_path / "in.png"
    test_image.save(image)
    inv = tmp_path / "inv.safetensors"
    assert main(["invert", str(image), "--model", str(with_defaults), *CPU, "--output", str(inv)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"]["steps"] == 7 and report["params"]["guidance_scale"] == 2.0 and report["nfe"] == 7

    assert main(["sample", "--model", str(with_defaults), *CPU, "--output", str(tmp_path / "s.png")]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 3

    assert main(["roundtrip", "--model", str(with_defaults), *CPU]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 7 and report["bit_exact"] is True

    assert main(["edit", str(inv), *CPU, "--output", str(tmp_path / "same.png")]) == 0  # a reconstruction
    assert json.loads(capsys.readouterr().out)["exact"] is True


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"steps": 0}', "steps"),
        ('{"stpes": 10}', "stpes"),
        ('{"steps": 1000}', "at most 999"),
        ('{"edit": {"edit_gamma": 2}}', "edit.edit_gamma"),
        ('{"edit": {"prompt": "a cat"}}', "prompt"),
        ('{"sample": {"gamma": -1}}', "sample.gamma"),
        ('{"gamma": 0.5, "steps": 50}', "amplifies"),
        ('{"steps": 10', "Expecting"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_a_bad_file_is_one_clear_error_naming_it(folder: Path, tmp_path: Path, capsys, content, message) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for part in folder.iterdir():
        (bad / part.name).symlink_to(part)
    (bad / DEFAULTS_FILE).write_text(content)
    with pytest.raises(InvalidParameter) as raised:
        load_model(bad, device="cpu")
    assert str(bad / DEFAULTS_FILE) in str(raised.value) and message in str(raised.value)

    assert main(["roundtrip", "--model", str(bad), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and DEFAULTS_FILE in err and message in err
