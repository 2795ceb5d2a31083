"""A real batched worker: jobs share its network calls and still reconstruct bit-exactly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support import delete_prefix, make_png, start_deployment

from bdia.client import BdiaClient


@pytest.fixture
def batched(redis_client, tmp_path: Path):
    deployment = start_deployment(redis_client, tmp_path / "logs", ["b0"], batch_size="4")
    yield deployment
    deployment.stop()
    delete_prefix(redis_client, deployment.prefix)


def test_worker_batches_jobs_and_reconstructs_them_bit_exactly(batched) -> None:
    with BdiaClient(batched.url, timeout=60) as client:
        # Four different inversions at once: they share the worker's network calls.
        submitted = [
            client.invert(make_png(70), "a gradient", steps=12),
            client.invert(make_png(71), "stripes", steps=16, guidance_scale=3.0),
            client.invert(make_png(72), "", steps=20, strength=0.6),
            client.invert(make_png(73), "a square", steps=10, guidance_scale=2.0, negative_prompt="blur"),
        ]
        jobs = [client.wait(s.job.id, timeout=120) for s in submitted]
        assert max(j.started_at for j in jobs) < min(j.finished_at for j in jobs)  # they ran together
        fingerprints = [client.inversion(s.inversion_id).fingerprint for s in submitted]
        assert {fp["batch_size"] for fp in fingerprints} == {"4"}
        assert sorted(fp["slot"] for fp in fingerprints) == ["0", "1", "2", "3"]

        # Reconstructions and edits together, in another order: each reconstruction takes its
        # inversion's slot, so every one is bit-exact.
        order = [3, 1, 0, 2]
        recon = [client.reconstruct(submitted[i].inversion_id) for i in order]
        edits = [client.edit(submitted[i].inversion_id, "a red gradient", guidance_scale=4.0) for i in (0, 2)]
        for job in recon:
            done = client.wait(job.id, timeout=120)
            assert done.result["exact"] is True and done.result["fingerprint_match"] is True
            assert done.result["latent_max_abs_error"] == 0.0
        for job in edits:
            assert client.wait(job.id, timeout=120).status == "succeeded"

        # A worker whose numerics differ (another thread count): near-exact, and it says so.
        worker = batched.workers.pop("b0")
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        batched.env["BDIA_WORKER_THREADS"] = "2"
        batched.start_worker("b1")
        batched.wait_ready(1)
        other = client.wait(client.reconstruct(submitted[0].inversion_id).id, timeout=120)
        assert other.result["fingerprint_match"] is False and other.result["exact"] is False
        assert other.result["latent_max_abs_error"] < 1e-2
