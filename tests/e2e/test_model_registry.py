"""The model registry over real processes: workers announce their model (family, size, schedule, defaults);
the API lists it, refuses models no worker serves and steps beyond the schedule, and fills the parameters
a request leaves out from the model's own defaults (a folder's ``bdia_defaults.json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from support import Deployment, assert_problem, delete_prefix, deployment_env, make_png, model_record

from bdia.params import DEFAULTS_FILE, ModelDefaults

GHOST = "ghost-model"
"""Listed in BDIA_MODELS, served by no worker."""
OWN = {"steps": 6, "guidance_scale": 2.0, "edit": {"edit_gamma": 0.5}}
"""The folder model's ``bdia_defaults.json``."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bdia.models import tiny_random_pipeline

    path = tmp_path_factory.mktemp("own-defaults")
    tiny_random_pipeline().save_pretrained(path)
    (path / DEFAULTS_FILE).write_text(json.dumps(OWN))
    return path


@pytest.fixture(scope="module")
def stack(redis_client: redis.Redis, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An API serving the folder model (one worker) and ``GHOST`` (none), steps allowed past the schedule."""
    prefix = f"bdia-test-registry-{time.time_ns() % 10**9}"
    env = deployment_env(prefix, model=str(folder), models=f"{folder},{GHOST}", max_steps="5000")
    running = Deployment(prefix, tmp_path_factory.mktemp("registry"), env, workers=["r0"]).start()
    yield running
    running.close()
    delete_prefix(redis_client, prefix)


def _invert(http: httpx.Client, **fields: object) -> httpx.Response:
    return http.post("/v1/inversions", files={"image": ("i.png", make_png(3), "image/png")}, data=fields)


def test_a_tiny_random_worker_announces_what_the_in_process_tests_assume(http: httpx.Client) -> None:
    (model,) = http.get("/v1/models").json()["models"]
    expected = model_record("tiny-random").model_dump(mode="json", exclude={"name", "info"})
    assert model["available"] and model["workers"] >= 1
    assert {key: model[key] for key in expected} == expected


def test_models_show_family_size_defaults_and_who_serves_them(stack: Deployment, folder: Path) -> None:
    body = httpx.get(f"{stack.url}/v1/models", timeout=10).json()
    own, ghost = body["models"]
    assert body["default"] == own["name"] == str(folder)
    assert own["available"] and own["workers"] == 1 and own["family"] == "stable-diffusion"
    assert (own["height"], own["width"], own["latent_factor"], own["num_train_timesteps"]) == (32, 32, 4, 1000)
    assert own["max_steps"] == 999  # SD's leading spacing with offset 1 puts a 1000th step past the schedule
    assert own["defaults"]["steps"] == 6 and own["defaults"]["guidance_scale"] == 2.0
    assert own["defaults"]["edit"]["edit_gamma"] == 0.5 and own["defaults"]["strength"] == 1.0
    assert ghost["name"] == GHOST and not ghost["available"] and ghost["workers"] == 0 and ghost["family"] is None
    assert ghost["defaults"] == ModelDefaults().model_dump(mode="json")


def test_a_model_no_worker_serves_is_refused_at_once(stack: Deployment, redis_client: redis.Redis) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        started = time.monotonic()
        refused = _invert(http, model=GHOST, prompt="x")
        assert time.monotonic() - started < 2
        body = assert_problem(refused, 503, "model_unavailable")
        assert GHOST in body["detail"] and refused.headers["Retry-After"]
        upload = http.post(
            "/v1/edits/upload",
            files={"image": ("i.png", make_png(4), "image/png")},
            data={"model": GHOST, "prompt": "y"},
        )
        assert_problem(upload, 503, "model_unavailable")
    assert redis_client.xlen(stack.keys.queue(GHOST)) == 0  # nothing queued for it


def test_steps_beyond_the_schedule_are_refused_at_the_api(stack: Deployment) -> None:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        body = assert_problem(_invert(http, steps="1000"), 422, "invalid_parameter")  # a worker would fail it
        assert "at most 999" in body["detail"] and body["errors"][0]["loc"] == ["body", "steps"]
        accepted = _invert(http, steps="999", strength="0.001")  # the most it allows passes, and runs
        job = http.get(f"/v1/jobs/{accepted.json()['id']}", headers={"Prefer": "wait=60"}).json()
        deadline = time.monotonic() + 120
        while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = http.get(f"/v1/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job


def test_unset_parameters_are_the_model_defaults(stack: Deployment) -> None:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        submitted = _invert(http, prompt="a gradient")
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["params"]["steps"] == 6 and job["params"]["guidance_scale"] == 2.0
        assert job["params"]["gamma"] == 1.0  # left out of the file: built in
        # The cache key is concrete: the same request spelling the defaults out names the same inversion.
        spelled = _invert(http, prompt="a gradient", steps="6", guidance_scale="2.0")
        assert spelled.json()["inversion_id"] == job["inversion_id"]

        edit = http.post("/v1/edits", json={"inversion_id": job["inversion_id"], "prompt": "a red gradient"})
        same = http.post("/v1/edits", json={"inversion_id": job["inversion_id"], "prompt": "a gradient"})
        assert edit.json()["params"]["edit_gamma"] == 0.5  # an edit: the model's edit defaults
        assert edit.json()["params"]["guidance_scale"] == 2.0  # not in them: the inversion's
        assert same.json()["params"]["edit_gamma"] is None  # a reconstruction keeps the inversion's settings
        for submission in (job, edit.json()):
            done = http.get(f"/v1/jobs/{submission['id']}", headers={"Prefer": "wait=60"})
            deadline = time.monotonic() + 120
            while done.json()["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                done = http.get(f"/v1/jobs/{submission['id']}")
            assert done.json()["status"] == "succeeded", done.json()
        assert http.get(f"/v1/jobs/{job['id']}").json()["metrics"]["nfe"] == 6
