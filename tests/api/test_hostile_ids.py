"""Ids that are not ids: a real job's or inversion's id with a key suffix appended names nothing.

Each id is part of a Redis key, so ``job_…:events`` would name the job's event stream; the API used to
read it as a job record and answer 503 (and so tell whether the job exists, in any tenant).
"""

from __future__ import annotations

import pytest
from support import assert_problem, make_png

SUFFIXES = (":events", ":result", ":spec", ":job", "x", "*")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_suffixed_ids_are_not_found(api, suffix: str) -> None:
    client = api(model="tiny-random")
    job = client.post("/v1/inversions", files={"image": ("a.png", make_png(3), "image/png")}, data={"steps": "4"})
    assert job.status_code == 202, job.text
    job_id, inversion_id = job.json()["id"], job.json()["inversion_id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}{suffix}"),
        ("GET", f"/v1/jobs/{job_id}{suffix}/events"),
        ("GET", f"/v1/jobs/{job_id}{suffix}/result"),
        ("POST", f"/v1/jobs/{job_id}{suffix}/cancel"),
        ("GET", f"/v1/inversions/{inversion_id}{suffix}"),
        ("GET", f"/v1/inversions/{inversion_id}{suffix}/latents"),
        ("DELETE", f"/v1/inversions/{inversion_id}{suffix}"),
    ):
        assert_problem(client.request(method, path), 404, "not_found")
    edit = client.post("/v1/edits", json={"inversion_id": inversion_id + suffix, "prompt": "x"})
    assert_problem(edit, 404, "not_found")
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # the real ones are still there
