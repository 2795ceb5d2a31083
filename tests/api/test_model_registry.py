"""The API against the model registry (in-process, no worker: the records are announced by the test): models
no worker serves are refused, steps beyond the schedule are 422, left-out parameters are the model's defaults."""

from __future__ import annotations

from support import REDIS_URL, announce_models, assert_problem, make_png, model_record

from bdia.jobqueue.settings import Settings
from bdia.params import ModelDefaults


def _invert(client, **fields: object):
    return client.post("/v1/inversions", files={"image": ("i.png", make_png(5), "image/png")}, data=fields)


def test_a_model_no_worker_announced_is_refused_and_listed_unavailable(api) -> None:
    client = api(model="tiny-random", models="tiny-random,ghost", announced=["tiny-random"])
    body = assert_problem(_invert(client, model="ghost"), 503, "model_unavailable")
    assert body["model"] == "ghost" and "ghost" in body["detail"]
    assert _invert(client, model="tiny-random").status_code == 202
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["tiny-random"]["available"] and listed["tiny-random"]["family"] == "tiny-random"
    assert not listed["ghost"]["available"] and listed["ghost"]["height"] is None


def test_edits_and_reconstructions_of_a_model_gone_are_refused(api, prefix, redis_client) -> None:
    client = api(model="tiny-random")
    inversion = _invert(client).json()["inversion_id"]
    redis_client.delete(f"{prefix}:model:tiny-random")  # its workers have been gone for BDIA_MODEL_TTL_S
    for path, body in (("/v1/edits", {"prompt": "x"}), ("/v1/reconstructions", {})):
        assert_problem(client.post(path, json={"inversion_id": inversion, **body}), 503, "model_unavailable")


def test_steps_beyond_the_schedule_and_defaults_from_the_record(api, prefix) -> None:
    client = api(model="tiny-random", max_steps=5000)
    own = ModelDefaults(steps=9, guidance_scale=3.0, edit={"edit_gamma": 0.25})
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)
    announce_models(settings, [model_record("tiny-random", max_steps=400, defaults=own)])

    body = assert_problem(_invert(client, steps="401"), 422, "invalid_parameter")
    assert "at most 400" in body["detail"] and body["errors"][0]["loc"] == ["body", "steps"]
    job = _invert(client, prompt="a").json()
    assert (job["params"]["steps"], job["params"]["guidance_scale"], job["params"]["strength"]) == (9, 3.0, 1.0)
    assert _invert(client, prompt="a", steps="4").json()["params"]["steps"] == 4

    upload = client.post(
        "/v1/edits/upload", files={"image": ("i.png", make_png(6), "image/png")}, data={"prompt": "b"}
    ).json()
    assert upload["params"]["edit_gamma"] == 0.25 and upload["params"]["guidance_scale"] == 3.0
    given = client.post(
        "/v1/edits/upload",
        files={"image": ("i.png", make_png(6), "image/png")},
        data={"prompt": "b", "edit_gamma": "1", "guidance_scale": "1.5"},
    ).json()
    assert given["params"]["edit_gamma"] == 1.0 and given["params"]["guidance_scale"] == 1.5
