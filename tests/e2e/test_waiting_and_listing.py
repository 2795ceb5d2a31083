"""``Prefer: wait`` and the listings through the real workers: a submission that asks to wait gets the
finished job (200), and the tenant's jobs and inversions are listed once they have finished."""

from __future__ import annotations

import httpx
from support import make_png

from bdia.client import BdiaClient


def test_waiting_submissions_get_the_finished_job(client: BdiaClient, http: httpx.Client) -> None:
    submitted = client.invert(make_png(70), "a gradient", steps=4, wait=60)
    assert submitted.job is not None and submitted.job.status == "succeeded"
    assert submitted.job.result.inversion_id == submitted.inversion_id
    again = client.invert(make_png(70), "a gradient", steps=4, wait=60)
    assert again.cached  # answered from the cache: 200 with the inversion, no waiting

    edit = client.edit(submitted.inversion_id, "a red gradient", wait=60)
    assert edit.status == "succeeded" and client.result(edit.id).startswith(b"\x89PNG")
    reconstruction = client.reconstruct(submitted.inversion_id, wait=60)
    assert reconstruction.status == "succeeded" and reconstruction.result["exact"] is True

    response = http.post(
        "/v1/edits",
        json={"inversion_id": submitted.inversion_id, "prompt": "a blue gradient"},
        headers={"Prefer": "wait=60", "Idempotency-Key": "wait-1"},
    )
    assert response.status_code == 200 and response.headers["Preference-Applied"] == "wait=60"
    replay = http.post(
        "/v1/edits",
        json={"inversion_id": submitted.inversion_id, "prompt": "a blue gradient"},
        headers={"Idempotency-Key": "wait-1"},
    )
    assert replay.status_code == 200 and replay.json() == response.json()
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.headers["Preference-Applied"] == "wait=60"

    # A job that takes longer than the wait: 202 as without it, with the preference applied.
    slow = http.post(
        "/v1/inversions",
        files={"image": ("a.png", make_png(71), "image/png")},
        data={"steps": "400"},
        headers={"Prefer": "wait=0.5"},
    )
    assert slow.status_code == 202 and slow.headers["Preference-Applied"] == "wait=0.5"
    assert (
        slow.json()["status"] in ("queued", "running") and slow.headers["Location"] == f"/v1/jobs/{slow.json()['id']}"
    )
    client.cancel(slow.json()["id"])


def test_finished_jobs_and_inversions_are_listed(client: BdiaClient) -> None:
    submitted = client.invert(make_png(72), "", steps=4, wait=60)
    edit = client.edit(submitted.inversion_id, "an edit", wait=60)
    listed = client.jobs(kind="edit", status="succeeded", limit=100)
    assert edit.id in [job.id for job in listed.items]
    found = next(job for job in listed.items if job.id == edit.id)
    assert found.metrics.nfe == edit.metrics.nfe and found.result.url == f"/v1/jobs/{edit.id}/result"
    newest = client.jobs(limit=2).items
    assert [job.id for job in newest] == [edit.id, submitted.job.id]
    everything = list(client.all_jobs(kind="invert", limit=3))
    assert submitted.job.id in [job.id for job in everything]
    assert len({job.id for job in everything}) == len(everything)

    ready = client.inversions(status="ready", limit=100).items
    assert submitted.inversion_id in [i.inversion_id for i in ready]
    assert all(i.status == "ready" for i in ready)
