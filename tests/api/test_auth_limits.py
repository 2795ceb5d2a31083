"""Authentication, tenant isolation and limits, on the in-process API over a real Redis."""

from __future__ import annotations

import logging
import time

import pytest
from support import ALICE, BOB, KEYS, assert_problem, bearer, free_port, make_png

from bdia.app.auth import ApiKeys, digest
from bdia.jobqueue.keys import Keys


def _invert(client, key: str, seed: int = 0, **data: str):
    files = {"image": ("a.png", make_png(seed), "image/png")}
    return client.post("/v1/inversions", files=files, data={"steps": "4", **data}, headers=bearer(key))


def test_keys_are_held_as_digests_and_name_their_tenant(tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops-managed\ncarol:sha256:{digest('carol-secret')}\n\n")
    keys = ApiKeys.parse([*KEYS.split(","), "bare-key", *path.read_text().splitlines()])
    assert keys.tenant(ALICE) == "alice" and keys.tenant(BOB) == "bob"
    assert keys.tenant("carol-secret") == "carol" and keys.tenant("bare-key") == "default"
    assert keys.tenant("nope") is None and keys.tenant(None) is None
    assert ALICE not in repr(keys) and "carol-secret" not in repr(keys)  # nothing but digests at rest
    for bad in ("a b:key", "tenant:", "x" * 65 + ":key"):
        with pytest.raises(ValueError):
            ApiKeys.parse([bad])


def test_open_without_keys_logs_a_warning(api, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="bdia.auth"):
        client = api()
    assert any("open to anyone" in r.getMessage() for r in caplog.records)
    assert client.get("/v1/models").status_code == 200


def test_bearer_keys_from_env_and_file(api, tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"carol:sha256:{digest('carol-secret')}\n")
    client = api(api_keys=KEYS, api_keys_file=str(path))
    assert_problem(client.get("/v1/models"), 401, "unauthorized")
    assert_problem(client.get("/v1/models", headers=bearer("wrong")), 401, "unauthorized")
    for key in (ALICE, BOB, "carol-secret"):
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_tenants_see_only_their_own_jobs_inversions_and_idempotency_keys(api) -> None:
    client = api(api_keys=KEYS)
    job = _invert(client, ALICE).json()
    job_id, inversion_id = job["id"], job["inversion_id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(ALICE)).status_code == 200
    assert client.get(f"/v1/inversions/{inversion_id}", headers=bearer(ALICE)).json()["status"] == "pending"
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/inversions/{inversion_id}"),
        ("GET", f"/v1/inversions/{inversion_id}/latents"),
        ("DELETE", f"/v1/inversions/{inversion_id}"),
    ]:
        assert_problem(client.request(method, path, headers=bearer(BOB)), 404, "not_found")
    for body in ({"inversion_id": inversion_id}, {"inversion_id": inversion_id, "prompt": "x"}):
        path = "/v1/reconstructions" if "prompt" not in body else "/v1/edits"
        assert_problem(client.post(path, json=body, headers=bearer(BOB)), 404, "not_found")
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(ALICE)).json()["status"] == "queued"  # bob canceled nothing

    # The same upload names a different inversion for another tenant: nobody can probe others' uploads.
    theirs = _invert(client, BOB).json()
    assert theirs["inversion_id"] != inversion_id and theirs["id"] != job_id

    # Idempotency keys are per tenant: bob's "k" with another body is not alice's "k".
    def keyed(key: str, seed: int):
        files = {"image": ("a.png", make_png(seed), "image/png")}
        return client.post(
            "/v1/inversions", files=files, data={"steps": "4"}, headers={**bearer(key), "Idempotency-Key": "k"}
        )

    first = keyed(ALICE, 1)
    assert keyed(ALICE, 1).headers.get("Idempotent-Replayed") == "true"
    assert_problem(keyed(ALICE, 2), 422, "idempotency_key_reused")
    other = keyed(BOB, 2)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_rate_limit_per_tenant(api) -> None:
    client = api(api_keys=KEYS, rate_limit_per_minute=2)
    for seed in range(2):
        assert _invert(client, ALICE, seed).status_code == 202
    response = _invert(client, ALICE, 9)
    assert_problem(response, 429, "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert _invert(client, BOB, 9).status_code == 202  # bob has his own budget


def test_unfinished_jobs_cap_per_tenant_and_global_queue_bound(api, redis_client, prefix) -> None:
    client = api(api_keys=KEYS, max_jobs_per_tenant=2)
    jobs = [_invert(client, ALICE, seed).json() for seed in range(2)]
    response = _invert(client, ALICE, 5)
    assert_problem(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0
    assert _invert(client, BOB, 5).status_code == 202
    assert client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=bearer(ALICE)).json()["status"] == "canceled"
    assert _invert(client, ALICE, 5).status_code == 202  # a finished job frees its slot
    assert redis_client.zcard(Keys(prefix).tenant_jobs("alice")) == 2

    full = api(api_keys=KEYS, max_queue=3)  # 3 jobs are queued already
    assert_problem(_invert(full, BOB, 7), 503, "queue_full")


def test_body_limit_is_enforced_while_the_body_streams(api, redis_client, prefix) -> None:
    client = api(max_upload_bytes=50_000)  # a request body may be 2 × 50 kB + 1 MiB
    limit = 2 * 50_000 + 1024 * 1024

    def chunks():  # no Content-Length: only counting the stream can stop it
        boundary = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(64):
            yield b"\0" * (64 * 1024)

    response = client.post(
        "/v1/inversions", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_problem(response, 413, "payload_too_large")
    big = b"\0" * (limit + 1)
    assert_problem(
        client.post("/v1/edits", content=big, headers={"content-type": "application/json"}), 413, "payload_too_large"
    )
    assert redis_client.xlen(Keys(prefix).queue("tiny-random")) == 0


def test_redis_unreachable_answers_503_problem_json_fast(api) -> None:
    client = api(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    for method, path in [
        ("GET", "/v1/jobs/job_" + "0" * 24),  # a well-formed id: it is looked up
        ("GET", "/v1/models"),
        ("GET", "/readyz"),
        ("POST", "/v1/reconstructions"),
    ]:
        started = time.monotonic()
        response = client.request(method, path, json={"inversion_id": "inv_" + "0" * 32} if method == "POST" else None)
        assert time.monotonic() - started < 1.5
        assert_problem(response, 503)
    assert client.get("/healthz").status_code == 200
