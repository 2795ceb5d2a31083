"""Text no response can carry: a lone surrogate in a JSON string is refused (422), and nothing is queued.

JSON may escape a surrogate half on its own (``"\\ud800"``); it used to be accepted, queued as a job,
and then every answer about that job failed to encode (500).
"""

from __future__ import annotations

import json

import pytest
from support import assert_problem, make_png

from bdia.jobqueue.keys import Keys


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_lone_surrogates_are_refused_before_anything_is_queued(api, redis_client, prefix, field: str) -> None:
    client = api(model="tiny-random")
    inversion = client.post("/v1/inversions", files={"image": ("a.png", make_png(4), "image/png")}, data={"steps": "4"})
    inversion_id = inversion.json()["inversion_id"]
    queued = redis_client.xlen(Keys(prefix).queue("tiny-random"))
    body = {"inversion_id": inversion_id, "prompt": "a cat", field: "\ud800"}
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape \\ud800
    response = client.post("/v1/edits", content=raw, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422, "invalid_parameter")
    assert field in problem["detail"] and "Unicode" in problem["detail"]
    assert redis_client.xlen(Keys(prefix).queue("tiny-random")) == queued


def test_deeply_nested_json_is_a_bad_request(api) -> None:
    response = api().post(
        "/v1/edits", content="[" * 100_000 + "]" * 100_000, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "bad_request")
