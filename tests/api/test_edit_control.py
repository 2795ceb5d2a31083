"""Controlled-edit parameters over HTTP: bad values are problem+json 422 before anything is queued, and
the ones given travel in the job to the worker. The in-process API over a real Redis, with no worker."""

from __future__ import annotations

import json

import redis
from support import assert_problem, make_png

from bdia.jobqueue.keys import Keys


def _inversion(client) -> str:
    files = {"image": ("a.png", make_png(0, (64, 48)), "image/png")}
    response = client.post("/v1/inversions", files=files, data={"steps": "4", "prompt": "a red circle"})
    assert response.status_code == 202
    return response.json()["inversion_id"]


def test_bad_control_values_are_problems(api, prefix: str, redis_client: redis.Redis) -> None:
    client = api()
    inversion_id = _inversion(client)
    queued = redis_client.xlen(Keys(prefix).queue("tiny-random"))
    edit = {"inversion_id": inversion_id, "prompt": "a blue circle"}
    for extra, field in [
        ({"cross_fraction": 1.5}, "cross_fraction"),
        ({"self_fraction": -0.5}, "self_fraction"),
        ({"control": "everything"}, "control"),
        ({"mask_mode": "magic"}, "mask_mode"),
        ({"reweight": {"blue": 11}}, "reweight"),
        ({"unchanged_tolerance": 300}, "unchanged_tolerance"),
    ]:
        body = assert_problem(client.post("/v1/edits", json={**edit, **extra}), 422, "invalid_parameter")
        assert body["errors"][0]["loc"][:2] == ["body", field]
    body = assert_problem(client.post("/v1/edits", json={**edit, "blend_words": ["star"]}), 422, "invalid_parameter")
    assert body["errors"][0]["loc"] == ["body", "blend_words"]
    assert "'star' is not in the source or the edit prompt" in body["errors"][0]["msg"]
    body = assert_problem(client.post("/v1/edits", json={**edit, "reweight": {"red": 2}}), 422, "invalid_parameter")
    assert "'red' is not in the edit prompt" in body["errors"][0]["msg"]
    assert redis_client.xlen(Keys(prefix).queue("tiny-random")) == queued


def test_given_control_values_reach_the_job(api, prefix: str, redis_client: redis.Redis) -> None:
    client = api()
    inversion_id = _inversion(client)
    edit = {"inversion_id": inversion_id, "prompt": "a blue circle", "control": "cross+self", "blend_words": ["red"]}
    job = client.post("/v1/edits", json={**edit, "restart_removed": False})
    assert job.status_code == 202, job.text
    raw = redis_client.hget(Keys(prefix).job(job.json()["id"]), "params")
    params = json.loads(raw)
    assert params["control"] == "cross+self" and params["blend_words"] == ["red"]
    assert params["restart_removed"] is False


def test_the_upload_form_takes_the_control_fields(api, prefix: str, redis_client: redis.Redis) -> None:
    client = api()
    files = {"image": ("a.png", make_png(1, (64, 48)), "image/png")}
    form = {"steps": "4", "source_prompt": "a red circle", "prompt": "a blue circle"}
    queued = redis_client.xlen(Keys(prefix).queue("tiny-random"))
    for extra, field in [({"cross_fraction": "1.5"}, "cross_fraction"), ({"mask_mode": "magic"}, "mask_mode")]:
        body = assert_problem(
            client.post("/v1/edits/upload", files=files, data={**form, **extra}), 422, "invalid_parameter"
        )
        assert body["errors"][0]["loc"][:2] == ["body", field]
    body = assert_problem(
        client.post("/v1/edits/upload", files=files, data={**form, "blend_words": "star"}), 422, "invalid_parameter"
    )
    assert body["errors"][0]["loc"] == ["body", "blend_words"]
    assert redis_client.xlen(Keys(prefix).queue("tiny-random")) == queued
    given = {
        "control": "none",
        "mask_mode": "noise",
        "cross_fraction": "0.5",
        "blend_words": ["red", "circle"],
        "restart_removed": "false",
        "keep_unchanged": "false",
        "unchanged_tolerance": "4",
    }
    job = client.post("/v1/edits/upload", files=files, data={**form, **given})
    assert job.status_code == 202, job.text
    params = json.loads(redis_client.hget(Keys(prefix).job(job.json()["id"]), "params"))
    assert params["control"] == "none" and params["mask_mode"] == "noise" and params["cross_fraction"] == 0.5
    assert params["blend_words"] == ["red", "circle"] and params["restart_removed"] is False
    assert params["keep_unchanged"] is False and params["unchanged_tolerance"] == 4
