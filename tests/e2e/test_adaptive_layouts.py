"""Adaptive batch layouts (docs/benchmarks.md#step-level-batching) keep exactness: each job's batch size is
chosen when it is admitted, it keeps that layout for life (or restarts from scratch in a wider one while
young), its fingerprint records it, and a reconstruction runs in its inversion's layout.

The policy (``place``) is pure and tested as such; the worker runs in this process over the real Redis,
stepped by hand so that a job restarts in a wider batch on cue, and as a separate process behind the
real API with concurrent clients."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from support import REDIS_URL, delete_prefix, make_png, start_deployment

import bdia
from bdia.batching import Layout
from bdia.client import BdiaClient
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings
from bdia.ops import invert_latent
from bdia.params import InversionParams
from bdia.workers.tasks import Seat, place, widths

# --- the policy ---------------------------------------------------------------------------------


def test_widths_are_powers_of_two_up_to_the_batch_size() -> None:
    assert widths(1) == [1]
    assert widths(2) == [1, 2]
    assert widths(4) == [1, 2, 4]
    assert widths(6) == [1, 2, 4, 6]
    assert widths(8) == [1, 2, 4, 8]


def test_a_lone_job_runs_at_batch_size_one_and_demand_widens_new_batches() -> None:
    assert place({}, batch_size=4, demand=1) == (Layout(1, 0), {})
    assert place({}, batch_size=4, demand=2) == (Layout(2, 0), {})
    assert place({}, batch_size=4, demand=3) == (Layout(4, 0), {})
    assert place({}, batch_size=4, demand=50) == (Layout(4, 0), {})
    assert place({}, batch_size=6, demand=5) == (Layout(6, 0), {})
    assert place({}, batch_size=1, demand=5) == (Layout(1, 0), {})


def test_a_free_slot_of_a_running_batch_comes_first() -> None:
    seats = {"a": Seat(Layout(4, 0)), "b": Seat(Layout(4, 2)), "c": Seat(Layout(1, 0), movable=True)}
    assert place(seats, batch_size=4, demand=1) == (Layout(4, 1), {})
    # The recorded slot when it is free, else the lowest free one.
    assert place(seats, batch_size=4, demand=9, preferred=Layout(4, 3)) == (Layout(4, 3), {})
    assert place(seats, batch_size=4, demand=9, preferred=Layout(4, 2)) == (Layout(4, 1), {})
    # A reconstruction pinned wider than the worker's batch size is no batch for others to join.
    assert place({"r": Seat(Layout(8, 5))}, batch_size=4, demand=2) == (Layout(2, 0), {})


def test_a_burst_that_arrives_one_job_at_a_time_ends_up_in_one_batch() -> None:
    first, moves = place({}, batch_size=4, demand=1)
    assert first == Layout(1, 0) and moves == {}
    # The second job: a batch of 2, and the young first job restarts in it.
    second, moves = place({"j1": Seat(first, movable=True)}, batch_size=4, demand=2)
    assert second == Layout(2, 0) and moves == {"j1": Layout(2, 1)}
    # The third: no free slot, so a batch of 4 that takes both.
    seats = {"j1": Seat(Layout(2, 1), movable=True), "j2": Seat(second, movable=True)}
    third, moves = place(seats, batch_size=4, demand=3)
    assert third == Layout(4, 0) and moves == {"j2": Layout(4, 1), "j1": Layout(4, 2)}
    # A batch with a job too old to move (or pinned) stays as it is, all of it.
    seats = {"j1": Seat(Layout(2, 1), movable=True), "j2": Seat(Layout(2, 0), movable=False)}
    assert place(seats, batch_size=4, demand=3) == (Layout(4, 0), {})


def test_defaults_come_from_the_device() -> None:
    from bdia.workers.worker import default_batch_size, default_threads

    assert (default_batch_size("cuda"), default_batch_size("cpu")) == (8, 4)
    assert default_threads("cuda", 16) == 1
    assert [default_threads("cpu", cores) for cores in (1, 2, 3, 9, 64)] == [1, 1, 2, 8, 8]


def test_a_fixed_worker_gives_every_job_its_batch_size() -> None:
    seats = {"a": Seat(Layout(4, 0)), "r": Seat(Layout(8, 5))}
    assert place({}, batch_size=4, demand=1, policy="fixed") == (Layout(4, 0), {})
    assert place(seats, batch_size=4, demand=1, policy="fixed") == (Layout(4, 1), {})
    assert place(seats, batch_size=4, policy="fixed", preferred=Layout(4, 3)) == (Layout(4, 3), {})
    assert place(seats, batch_size=4, policy="fixed", preferred=Layout(2, 1)) == (Layout(4, 1), {})
    with pytest.raises(ValueError):
        place({}, batch_size=4, policy="greedy")


# --- helpers ------------------------------------------------------------------------------------


def _recorded(fingerprint: dict[str, str]) -> Layout:
    return Layout(int(fingerprint["batch_size"]), int(fingerprint["slot"]))


def _engine_inversion(model, png: bytes, layout: Layout, **params) -> bdia.Inversion:
    """The inversion the engine alone makes of an upload, computing in ``layout``."""
    picture = bdia.imaging.fit_to_working(model, bdia.imaging.load_image(png))  # as the worker does
    z0 = bdia.imaging.encode(model, picture)
    return invert_latent(model, z0, InversionParams.create(model=model.name, **params), layout=layout)


def _assert_truthful(model, served: bytes, png: bytes, **params) -> Layout:
    """The served inversion is, bit for bit, what the engine makes in the layout its fingerprint records."""
    inversion = bdia.Inversion.from_bytes(served)
    layout = _recorded(inversion.fingerprint)
    alone = _engine_inversion(model, png, layout, **params)
    assert alone.fingerprint_id == inversion.fingerprint_id
    assert torch.equal(alone.z_hi, inversion.z_hi) and torch.equal(alone.z_lo, inversion.z_lo)
    return layout


# --- the worker in this process, stepped by hand ----------------------------------------------------


def test_a_young_job_restarted_in_a_wider_batch_inverts_and_reconstructs_exactly(
    redis_client, api, prefix: str, tiny_model
) -> None:
    from bdia.workers.worker import Worker

    http = api(model="tiny-random")
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, model="tiny-random", batch_size=4, worker_block_s=0.2)
    uploads = {seed: make_png(seed) for seed in (80, 81, 82, 83)}

    def submit(path: str, **kwargs) -> dict:
        response = http.post(path, **kwargs)
        assert response.status_code == 202, response.text
        return response.json()

    def invert(seed: int) -> dict:
        files = {"image": ("i.png", uploads[seed], "image/png")}
        return submit("/v1/inversions", files=files, data={"prompt": "a square", "steps": "24"})

    async def run_out(worker: Worker) -> None:
        while worker.active:
            await worker._step()
            await worker._settle()

    async def scenario() -> tuple[list[dict], dict[str, Layout], list[dict]]:
        worker = Worker(settings, tiny_model, name="stepped")
        await worker.queue.ensure_group("tiny-random")
        try:
            jobs = [invert(80)]
            await worker._fill()  # alone: a batch of one
            (lone,) = worker.active.values()
            assert lone.layout == Layout(1, 0) and lone.movable
            await worker._step()
            await worker._step()
            assert lone.steps == 2
            jobs += [invert(seed) for seed in (81, 82, 83)]
            await worker._fill()  # three more: a batch of 4, and the young first job restarts in it
            assert sorted(r.layout for r in worker.active.values()) == [Layout(4, s) for s in range(4)]
            assert lone.layout.batch_size == 4 and lone.discarded == 2 and lone.lane.evaluations == 0
            await run_out(worker)

            # Reconstructions run in their inversions' layouts, even alone, where the policy would choose 1.
            recorded = {}
            for job in jobs:
                inversion = http.get(f"/v1/inversions/{job['inversion_id']}").json()
                recorded[job["inversion_id"]] = _recorded(inversion["fingerprint"])
            reconstructions = []
            for job in jobs[:2]:
                reconstructions.append(submit("/v1/reconstructions", json={"inversion_id": job["inversion_id"]}))
                await worker._fill()
                (running,) = worker.active.values()
                assert running.layout == recorded[job["inversion_id"]] and not running.movable
                await run_out(worker)
            for job in jobs:  # and together
                reconstructions.append(submit("/v1/reconstructions", json={"inversion_id": job["inversion_id"]}))
            await worker._fill()
            assert sorted(r.layout for r in worker.active.values()) == sorted(recorded.values())
            await run_out(worker)
            return jobs, recorded, reconstructions
        finally:
            await worker.redis.aclose()

    jobs, recorded, reconstructions = asyncio.run(scenario())
    for job in jobs:
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    # The restarted job's progress never went backwards: its new lane stayed quiet until past it.
    events = redis_client.xrange(Keys(prefix).events(jobs[0]["id"]))
    steps = [json.loads(fields[b"data"])["step"] for _, fields in events if fields[b"event"] == b"progress"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[0] == 1
    # Every fingerprint is truthful: the engine alone, in the recorded layout, makes the same bits.
    for job, seed in zip(jobs, uploads, strict=True):
        served = http.get(f"/v1/inversions/{job['inversion_id']}/latents").content
        layout = _assert_truthful(tiny_model, served, uploads[seed], prompt="a square", steps=24)
        assert layout == recorded[job["inversion_id"]]
    assert len(reconstructions) == 6
    for submitted in reconstructions:
        job = http.get(f"/v1/jobs/{submitted['id']}").json()
        assert job["status"] == "succeeded", job
        assert job["result"]["exact"] is True and job["result"]["latent_max_abs_error"] == 0.0


# --- real worker processes behind the real API ------------------------------------------------------


@pytest.fixture
def adaptive(redis_client, tmp_path: Path):
    deployment = start_deployment(redis_client, tmp_path / "logs", ["a0"], batch_size="4", batch_policy="adaptive")
    yield deployment
    deployment.stop()
    delete_prefix(redis_client, deployment.prefix)


INVERSIONS = [  # (seed, prompt, params): different settings share calls
    (90, "a gradient", {"steps": 12}),
    (91, "stripes", {"steps": 16, "guidance_scale": 3.0}),
    (92, "", {"steps": 20, "strength": 0.6}),
    (93, "a square", {"steps": 10, "guidance_scale": 2.0, "negative_prompt": "blur"}),
]


def test_an_adaptive_worker_keeps_every_reconstruction_bit_exact(adaptive, tiny_model) -> None:
    with BdiaClient(adaptive.url, timeout=60) as client:
        # A lone inversion runs at batch size 1.
        lone = client.invert(make_png(89), "a dot", steps=12)
        client.wait(lone.job.id, timeout=120)
        assert _recorded(client.inversion(lone.inversion_id).fingerprint) == Layout(1, 0)

        # Concurrent inversions, one client each: whatever layouts the demand gave them.
        def invert(case: tuple[int, str, dict]) -> str:
            seed, prompt, params = case
            with BdiaClient(adaptive.url, timeout=60) as own:
                submitted = own.invert(make_png(seed), prompt, **params)
                assert own.wait(submitted.job.id, timeout=120).status == "succeeded"
                return submitted.inversion_id

        with ThreadPoolExecutor(len(INVERSIONS)) as pool:
            ids = list(pool.map(invert, INVERSIONS))
        layouts = [_recorded(client.inversion(i).fingerprint) for i in ids]
        assert all(layout.batch_size in (1, 2, 4) and layout.slot < layout.batch_size for layout in layouts)
        for inversion_id, (seed, prompt, params) in zip(ids, INVERSIONS, strict=True):
            _assert_truthful(tiny_model, client.latents(inversion_id), make_png(seed), prompt=prompt, **params)

        # Reconstructions all at once, then each alone: every one in its inversion's layout, bit-exact.
        everything = [lone.inversion_id, *ids]
        together = [client.reconstruct(i) for i in reversed(everything)]
        alone = []
        for job in together:
            alone.append(client.wait(job.id, timeout=120))
        for inversion_id in everything:
            alone.append(client.wait(client.reconstruct(inversion_id).id, timeout=120))
        for done in alone:
            assert done.status == "succeeded", done.error
            assert done.result["exact"] is True and done.result["fingerprint_match"] is True
            assert done.result["latent_max_abs_error"] == 0.0

        # An edit of a cached inversion: fine in any layout (edits are not exact), and it succeeds.
        edit = client.edit(ids[3], "a red square", guidance_scale=4.0)
        assert client.wait(edit.id, timeout=120).status == "succeeded"


def test_a_fixed_worker_runs_every_job_at_its_batch_size(redis_client, tmp_path: Path, tiny_model) -> None:
    deployment = start_deployment(redis_client, tmp_path / "logs", ["f0"], batch_size="2", batch_policy="fixed")
    try:
        with BdiaClient(deployment.url, timeout=60) as client:
            submitted = client.invert(make_png(95), "a dot", steps=8)
            client.wait(submitted.job.id, timeout=120)
            served = client.latents(submitted.inversion_id)
            assert _assert_truthful(tiny_model, served, make_png(95), prompt="a dot", steps=8) == Layout(2, 0)
            done = client.wait(client.reconstruct(submitted.inversion_id).id, timeout=120)
            assert done.result["exact"] is True and done.result["latent_max_abs_error"] == 0.0
    finally:
        deployment.stop()
        delete_prefix(redis_client, deployment.prefix)
