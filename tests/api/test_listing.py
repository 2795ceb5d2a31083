"""``GET /v1/jobs`` and ``GET /v1/inversions``: per tenant, newest first, cursor pages, filters, and the
per-tenant indexes behind them (kept with the submissions, dropped with the records), in-process."""

from __future__ import annotations

import json
import time

from support import ALICE, BOB, KEYS, assert_problem, bearer, make_png

from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings


def _invert(client, key: str | None = None, seed: int = 0, **data: str):
    files = {"image": ("a.png", make_png(seed), "image/png")}
    response = client.post(
        "/v1/inversions", files=files, data={"steps": "4", **data}, headers=bearer(key) if key else {}
    )
    assert response.status_code == 202, response.text
    return response.json()


def _pages(client, path: str, headers: dict | None = None, **query) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=params, headers=headers or {})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_jobs_newest_first_in_cursor_pages_with_filters(api, redis_client, prefix) -> None:
    client = api()
    inverts = [_invert(client, seed=n) for n in range(3)]
    edit = client.post(
        "/v1/edits/upload", files={"image": ("a.png", make_png(9), "image/png")}, data={"prompt": "p", "steps": "4"}
    ).json()
    reconstruction = client.post("/v1/reconstructions", json={"inversion_id": inverts[0]["inversion_id"]}).json()
    canceled = client.post(f"/v1/jobs/{inverts[1]['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    newest_first = [reconstruction["id"], edit["id"], *(j["id"] for j in reversed(inverts))]

    pages = _pages(client, "/v1/jobs", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [job["id"] for page in pages for job in page] == newest_first
    first, second = pages[0]
    assert first["kind"] == "reconstruct" and first["status"] == "queued"
    assert first["queue_position"] is None  # it waits for the job making its inversion (docs/api.md#resources)
    assert second["kind"] == "edit" and second["queue_position"] >= 1

    def ids(**query) -> list[str]:
        return [job["id"] for page in _pages(client, "/v1/jobs", **query) for job in page]

    assert ids(kind="invert") == [j["id"] for j in reversed(inverts)]
    assert ids(kind=["edit", "reconstruct"]) == newest_first[:2]
    assert ids(status="canceled") == [inverts[1]["id"]]
    assert ids(status="queued", kind="invert", limit=1) == [inverts[2]["id"], inverts[0]["id"]]
    assert ids(status="succeeded") == []

    # The index expires with the records, and forgets a job whose record has gone.
    keys = Keys(prefix)
    assert 0 < redis_client.ttl(keys.tenant_history("public")) <= 2 * Settings().job_ttl_s
    redis_client.delete(keys.job(inverts[2]["id"]))
    assert inverts[2]["id"] not in ids()
    assert redis_client.zscore(keys.tenant_history("public"), inverts[2]["id"]) is None


def test_a_filtered_page_may_be_short_but_the_cursor_goes_on(api) -> None:
    client = api()
    jobs = [_invert(client, seed=n) for n in range(4)]
    client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
    pages = _pages(client, "/v1/jobs", status="canceled", limit=1)
    assert [job["id"] for page in pages for job in page] == [jobs[0]["id"]]


def test_listings_are_per_tenant(api) -> None:
    client = api(api_keys=KEYS)
    mine = _invert(client, ALICE, seed=1)
    theirs = _invert(client, BOB, seed=1)
    alice = client.get("/v1/jobs", headers=bearer(ALICE)).json()["items"]
    assert [job["id"] for job in alice] == [mine["id"]]
    inversions = client.get("/v1/inversions", headers=bearer(BOB)).json()["items"]
    assert [i["inversion_id"] for i in inversions] == [theirs["inversion_id"]]
    assert_problem(client.get("/v1/jobs"), 401, "unauthorized")


def test_inversions_ready_and_pending(api, redis_client, prefix) -> None:
    client = api()
    pending = _invert(client, seed=1)
    ready = _invert(client, seed=2)
    keys = Keys(prefix)
    meta = {
        "inversion_id": ready["inversion_id"],
        "model": "tiny-random",
        "prompt": "",
        "params": {"steps": 4},
        "image_sha256": "0" * 64,
        "nfe": 4,
        "size": 1,
        "created_at": time.time(),
    }
    redis_client.hset(
        keys.inversion(ready["inversion_id"]), mapping={"data": b"x", "checksum": "-", "meta": json.dumps(meta)}
    )
    redis_client.expire(keys.inversion(ready["inversion_id"]), 60)

    listed = client.get("/v1/inversions").json()
    assert [(i["inversion_id"], i["status"]) for i in listed["items"]] == [
        (ready["inversion_id"], "ready"),
        (pending["inversion_id"], "pending"),
    ]
    assert listed["next_cursor"] is None and listed["items"][1]["job_id"] == pending["id"]
    assert listed["items"][0]["expires_at"] > listed["items"][0]["created_at"]
    only_pending = client.get("/v1/inversions", params={"status": "pending"}).json()["items"]
    assert [i["inversion_id"] for i in only_pending] == [pending["inversion_id"]]
    page = client.get("/v1/inversions", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = client.get("/v1/inversions", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [i["inversion_id"] for i in rest["items"]] == [pending["inversion_id"]] and rest["next_cursor"] is None

    # Deleting an inversion takes it off the index; the index expires with the specs.
    index = keys.tenant_inversions("public")
    assert 0 < redis_client.ttl(index) <= Settings().inversion_ttl_s
    assert client.delete(f"/v1/inversions/{pending['inversion_id']}").status_code == 204
    assert redis_client.zscore(index, pending["inversion_id"]) is None
    assert [i["inversion_id"] for i in client.get("/v1/inversions").json()["items"]] == [ready["inversion_id"]]


def test_bad_list_queries_are_problems(api, redis_client, prefix) -> None:
    client = api()
    _invert(client)
    for path, query in [
        ("/v1/jobs", {"cursor": "not-a-cursor"}),
        ("/v1/jobs", {"cursor": "W10"}),  # valid base64 of "[]"
        ("/v1/jobs", {"status": "done"}),
        ("/v1/jobs", {"kind": "paint"}),
        ("/v1/jobs", {"limit": "0"}),
        ("/v1/jobs", {"limit": "101"}),
        ("/v1/jobs", {"limit": "ten"}),
        ("/v1/inversions", {"cursor": "%%%"}),
        ("/v1/inversions", {"status": "gone"}),
        ("/v1/inversions", {"limit": "-1"}),
    ]:
        body = assert_problem(client.get(path, params=query), 422, "invalid_parameter")
        assert body["errors"][0]["loc"][0] == "query", body
