"""A worker killed with SIGKILL mid-job: another worker reclaims the job once the lease expires, and
the result is bit-identical to an uninterrupted run. (It leaves the shared deployment one worker.)"""

from __future__ import annotations

import time

from safetensors.numpy import load
from support import Deployment, make_png

from bdia.client import BdiaClient

LEASE_S = 1.5
PARAMS = {"steps": 200, "strength": 0.5}  # K = 100 levels: a few seconds of work on tiny-random


def test_a_killed_workers_job_is_reclaimed_and_finishes_bit_identical(
    client: BdiaClient, deployment: Deployment
) -> None:
    image = make_png(50)
    reference = client.wait(client.edit_image(image, "a gradient", "a red gradient", **PARAMS), timeout=300)
    reference_png = client.result(reference.id)
    reference_latents = load(client.latents(reference.inversion_id))
    # Two live workers, a job longer than the lease: the job stayed with the worker that started it.
    assert [e.event for e in client.events(reference.id)].count("started") == 1
    client.delete_inversion(reference.inversion_id)  # so that the next run computes everything again

    job = client.edit_image(image, "a gradient", "a red gradient", **PARAMS)
    owner, started = None, 0.0
    for event in client.events(job.id):
        if event.event == "started":
            owner, started = event.data["worker"], time.monotonic()
        # Kill it mid-job: after two leases (a live worker's job is never taken from it) or,
        # on a fast machine, a quarter of the way into the regeneration, whichever is first.
        if event.event == "progress" and (
            time.monotonic() - started > 2 * LEASE_S + 0.3
            or (event.data["stage"] == "regenerate" and event.data["step"] >= 25)
        ):
            break
    assert client.job(job.id).status == "running", "the job finished before it could be killed"
    deployment.kill_worker(owner)

    final = client.wait(job.id, timeout=300)
    starts = [e.data["worker"] for e in client.events(job.id) if e.event == "started"]
    assert starts[0] == owner and len(starts) == 2 and starts[1] != owner
    assert final.metrics["attempts"] == 2 and final.metrics["inversion_cached"] is False
    assert client.result(job.id) == reference_png
    latents = load(client.latents(job.inversion_id))
    for name in ("z_hi", "z_lo", "z0"):
        assert latents[name].dtype == reference_latents[name].dtype
        assert (latents[name] == reference_latents[name]).all(), name
