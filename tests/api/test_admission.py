"""What a submission stores, and when: a refused one stores nothing; a job whose inversion another
job is making waits for it. The in-process API over a real Redis, with no worker."""

from __future__ import annotations

import redis
from support import assert_problem, make_png

from bdia.jobqueue.keys import Keys


def _keys(redis_client: redis.Redis, prefix: str) -> set[bytes]:
    return set(redis_client.scan_iter(match=f"{prefix}:*", count=1000))


def _invert(client, seed: int, **data: str):
    files = {"image": ("a.png", make_png(seed, (64, 48)), "image/png")}
    return client.post("/v1/inversions", files=files, data={"steps": "4", **data})


def _edit_upload(client, seed: int):
    files = {"image": ("a.png", make_png(seed), "image/png"), "mask": ("m.png", make_png(seed + 1), "image/png")}
    return client.post("/v1/edits/upload", files=files, data={"prompt": "an edit", "steps": "4"})


def test_a_refused_upload_stores_nothing(api, prefix: str, redis_client: redis.Redis) -> None:
    client = api(max_jobs_per_tenant=1)
    assert _invert(client, 0).status_code == 202  # the tenant is at its cap now
    before = _keys(redis_client, prefix)
    for seed in range(1, 6):
        assert_problem(_invert(client, seed), 429, "rate_limited")
        assert_problem(_edit_upload(client, 100 + seed), 429, "rate_limited")
    assert _keys(redis_client, prefix) == before  # no upload, spec or index entry was kept

    full = api(max_queue=1)  # the queue holds one job already: 503 before anything is written
    assert_problem(_invert(full, 20), 503, "queue_full")
    assert_problem(_invert(client, 21, gamma="0.5", steps="50"), 422, "gamma_unstable")
    assert _keys(redis_client, prefix) == before


def test_an_edit_waits_for_the_job_making_its_inversion(api, prefix: str, redis_client: redis.Redis) -> None:
    client, keys = api(), Keys(prefix)
    invert = _invert(client, 3).json()
    inversion_id = invert["inversion_id"]
    # Identical requests join the job that makes the inversion; an edit waits behind it, off the queue.
    assert _invert(client, 3).json()["id"] == invert["id"]
    edit = client.post("/v1/edits", json={"inversion_id": inversion_id, "prompt": "an edit"}).json()
    second = client.post("/v1/edits", json={"inversion_id": inversion_id, "prompt": "another"}).json()
    assert edit["status"] == "queued" and edit["queue_position"] is None
    assert redis_client.xlen(keys.queue(invert["model"])) == 1  # only the inversion
    assert redis_client.lrange(keys.inversion_waiting(inversion_id), 0, -1) == [
        edit["id"].encode(),
        second["id"].encode(),
    ]

    # Its maker canceled, the first edit goes on the queue and makes the inversion; the other waits for it.
    assert client.post(f"/v1/jobs/{invert['id']}/cancel").json()["status"] == "canceled"
    assert redis_client.get(keys.inversion_job(inversion_id)) == edit["id"].encode()
    assert client.get(f"/v1/jobs/{edit['id']}").json()["queue_position"] == 1
    assert redis_client.lrange(keys.inversion_waiting(inversion_id), 0, -1) == [second["id"].encode()]
    assert client.get(f"/v1/inversions/{inversion_id}").json()["job_id"] == edit["id"]
    # A new identical inversion request now waits too (an edit, not an invert job, makes it).
    again = _invert(client, 3).json()
    assert again["id"] != edit["id"] and again["queue_position"] is None
