"""Every model family through the real service: tiny SDXL, SD 3 and Flux pipelines saved with
``save_pretrained`` to folders, one deployment listing them in ``BDIA_MODELS`` and one worker per folder
(``BDIA_MODEL``). For each, over HTTP: ``GET /v1/models`` shows its family, native size and its family's
built-in defaults; an uploaded PNG is inverted, reconstructed bit-exactly and edited with a new prompt."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from safetensors import safe_open
from support import Deployment, assert_problem, delete_prefix, deployment_env, make_png

from bdia.cli import main
from bdia.client import BdiaClient
from bdia.errors import InvalidParameter
from bdia.params import DEFAULTS_FILE, EditParams

FAMILIES = ("stable-diffusion-xl", "stable-diffusion-3", "flux")
STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny pipeline saved to its own folder (no ``bdia_defaults.json``)."""
    from bdia.families import tiny_sdxl_pipeline
    from bdia.flow import tiny_flux_pipeline, tiny_sd3_pipeline

    made = {}
    for family, build in zip(FAMILIES, (tiny_sdxl_pipeline, tiny_sd3_pipeline, tiny_flux_pipeline), strict=True):
        made[family] = tmp_path_factory.mktemp(family)
        build().save_pretrained(made[family])
    return made


@pytest.fixture(scope="module")
def stack(
    redis_client: redis.Redis, folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The API serving the three folders, one worker each (``BDIA_MODEL`` set per worker)."""
    prefix = f"bdia-test-families-{time.time_ns() % 10**9}"
    names = [str(folder) for folder in folders.values()]
    env = deployment_env(prefix, model=names[0], models=",".join(names), max_steps="5000")
    running = Deployment(prefix, tmp_path_factory.mktemp("families"), env)
    try:
        for index, name in enumerate(names):
            running.env = {**env, "BDIA_MODEL": name}
            running.start_worker(f"family{index}")
        running.env = env
        running.start_api()
        running.wait_ready(timeout_s=180)
    except BaseException:
        running.close()
        raise
    yield running
    running.close()
    delete_prefix(redis_client, prefix)


def test_models_list_each_family_with_its_size_and_defaults(stack: Deployment, folders: dict[str, Path]) -> None:
    from bdia.families import family_class

    with BdiaClient(stack.url, timeout=30) as client:
        listed = {model.name: model for model in client.models().models}
    for family, folder in folders.items():
        model = listed[str(folder)]
        assert model.available and model.workers == 1 and model.family == family
        assert model.height and model.width and model.latent_factor and model.size_multiple
        expected = family_class(family).builtin_defaults().model_dump(mode="json")
        assert model.defaults == expected
    assert listed[str(folders["flux"])].defaults["guidance_scale"] == 3.5
    assert listed[str(folders["stable-diffusion-3"])].defaults["edit"]["control"] == "none"


@pytest.mark.parametrize("family", FAMILIES)
def test_invert_reconstruct_exactly_and_edit(stack: Deployment, folders: dict[str, Path], family: str) -> None:
    model = str(folders[family])
    with BdiaClient(stack.url, timeout=60) as client:
        submitted = client.invert(make_png(7), "a gradient", model=model, steps=STEPS)
        assert submitted.job is not None and submitted.job.params.steps == STEPS
        inverted = client.wait(submitted.job, timeout=120, stream=False)
        inversion_id = inverted.result.inversion_id
        assert inversion_id

        rebuilt = client.wait(client.reconstruct(inversion_id), timeout=120, stream=False)
        assert rebuilt.result.exact is True and rebuilt.result.latent_max_abs_error == 0.0

        edit = client.edit(inversion_id, "a red gradient")
        edited = client.wait(edit, timeout=120, stream=False)
        assert edited.status == "succeeded" and edited.result.url
        assert client.result(edited.id)[:8] == b"\x89PNG\r\n\x1a\n"

        # Flow models edit as plain regenerations: asking one for attention control is refused at once.
        asked = {"inversion_id": inversion_id, "prompt": "a blue gradient", "control": "cross"}
        refused = client.http.post("/v1/edits", json=asked)
        if family == "stable-diffusion-xl":
            assert refused.status_code == 202, refused.text
            client.wait(refused.json()["id"], timeout=120, stream=False)
        else:
            body = assert_problem(refused, 422, "invalid_parameter")
            assert body["errors"][0]["loc"] == ["body", "control"] and "flow model" in body["detail"]
            automatic = client.http.post("/v1/edits", json={**asked, "control": "none", "mask_mode": "auto"})
            assert assert_problem(automatic, 422, "invalid_parameter")["errors"][0]["loc"] == ["body", "mask_mode"]


@pytest.mark.parametrize(("family", "steps", "guidance"), [("stable-diffusion-3", 28, 7.0), ("flux", 28, 3.5)])
def test_the_cli_samples_with_the_familys_defaults(
    folders: dict[str, Path], tmp_path: Path, family: str, steps: int, guidance: float
) -> None:
    latent = tmp_path / "z.safetensors"
    argv = ["sample", "--model", str(folders[family]), "--prompt", "a square", "--output", str(tmp_path / "o.png")]
    assert main([*argv, "--save-latent", str(latent)]) == 0
    with safe_open(str(latent), "pt") as saved:
        meta = saved.metadata()
    assert (int(meta["steps"]), float(meta["guidance_scale"])) == (steps, guidance)


def test_a_defaults_file_overrides_only_what_it_names(folders: dict[str, Path], tmp_path: Path) -> None:
    from bdia.models import load_model

    folder = tmp_path / "flux"
    shutil.copytree(folders["flux"], folder)
    (folder / DEFAULTS_FILE).write_text(json.dumps({"steps": 4, "edit": {"edit_gamma": 0.5}}))
    defaults = load_model(str(folder)).defaults
    assert (defaults.steps, defaults.guidance_scale, defaults.sample.steps) == (4, 3.5, 28)
    assert (defaults.edit.edit_gamma, defaults.edit.control, defaults.edit.mask_mode) == (0.5, "none", "none")


def test_the_engine_refuses_control_on_a_flow_model(folders: dict[str, Path]) -> None:
    from bdia.models import load_model
    from bdia.ops import invert, regenerate

    model = load_model(str(folders["stable-diffusion-3"]))
    inversion = invert(model, make_png(2, (16, 16)), "a square", steps=2)
    assert regenerate(model, inversion, "a circle").mask is None  # the defaults: a plain regeneration
    with pytest.raises(InvalidParameter, match="control must be 'none' on a flow model"):
        regenerate(model, inversion, "a circle", edit=EditParams(control="cross"))
    with pytest.raises(InvalidParameter, match="mask_mode must be 'none'"):
        regenerate(model, inversion, "a circle", edit=EditParams(mask_mode="attention", control="none"))
