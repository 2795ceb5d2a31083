"""The HTTP contract end to end: the API process, a real ``tiny-random`` worker process, a real Redis."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx
import pytest
from PIL import Image
from support import ROOT, Deployment, make_png

from bdia.client import ApiError, BdiaClient

STEPS = 6


def test_the_api_process_never_imports_torch() -> None:
    code = "import sys, bdia.app.main, bdia.client; bdia.app.main.create_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_health_readiness_models_and_docs(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["workers"]["tiny-random"] >= 1
    models = http.get("/v1/models").json()
    assert models["default"] == "tiny-random"
    (model,) = models["models"]
    assert model["available"] and (model["height"], model["width"]) == (32, 32)
    assert model["defaults"]["steps"] == 50 and model["defaults"]["gamma"] == 1.0
    assert "/v1/inversions" in http.get("/openapi.json").json()["paths"]
    assert http.get("/docs").status_code == 200


def test_invert_then_edit_reuses_the_cache_and_reconstruction_is_exact(
    client: BdiaClient, http: httpx.Client, deployment: Deployment, redis_client
) -> None:
    image = make_png(1)
    submitted = client.invert(image, "a gradient", steps=STEPS)
    assert not submitted.cached and submitted.job is not None
    job = submitted.job
    assert job.kind == "invert" and job.status in ("queued", "running", "succeeded")
    assert job.params.to_dict() == {
        "prompt": "a gradient",
        "negative_prompt": "",
        "steps": STEPS,
        "strength": 1.0,
        "guidance_scale": 1.0,
        "gamma": 1.0,
        "exact": True,
        "method": "bdia",
        "state_dtype": "float64",
    }
    job = client.wait(job)
    assert job.metrics["nfe"] == STEPS and job.metrics["inversion_cached"] is False
    assert job.result["inversion_id"] == submitted.inversion_id
    assert job.finished_at and job.started_at and job.metrics["queue_seconds"] >= 0

    inversion = client.inversion(submitted.inversion_id)
    assert inversion.status == "ready" and inversion.level == STEPS
    assert inversion.fingerprint and inversion.fingerprint["threads"] == "1"
    assert inversion.latent_std and inversion.latent_std > 0
    assert inversion.created_at and inversion.expires_at > inversion.created_at

    # A repeated request is answered from the cache: 200, and no job is queued.
    submitted_before = redis_client.hget(deployment.keys.stats, 'jobs_submitted_total{kind="invert"}')
    again = client.invert(image, "a gradient", steps=STEPS)
    assert again.cached and again.inversion_id == submitted.inversion_id
    assert redis_client.hget(deployment.keys.stats, 'jobs_submitted_total{kind="invert"}') == submitted_before

    latents = client.latents(submitted.inversion_id)
    header = json.loads(latents[8 : 8 + int.from_bytes(latents[:8], "little")])
    assert {"z_hi", "z_lo"} <= header.keys() and "fingerprint" in header["__metadata__"]

    edit = client.wait(client.edit(submitted.inversion_id, "a red gradient"))
    assert edit.metrics["inversion_cached"] is True and edit.metrics["nfe"] == STEPS - 1
    assert edit.params["prompt"] == "a red gradient" and edit.params["guidance_scale"] == 1.0
    png = client.result(edit.id)
    assert Image.open(io.BytesIO(png)).size == (48, 40) == (edit.result["width"], edit.result["height"])  # the upload's
    assert (edit.result["working_width"], edit.result["working_height"]) == (32, 32)  # the nearest in 8 px steps
    response = http.get(f"/v1/jobs/{edit.id}/result")
    assert response.headers["content-type"] == "image/png"

    reconstruction = client.wait(client.reconstruct(submitted.inversion_id))
    result = reconstruction.result
    assert result["latent_max_abs_error"] == 0.0 and result["fingerprint_match"] and result["exact"]
    # Exact: the upload itself comes back (PSNR null: identical); the VAE's own error shows at the working size.
    assert result["psnr"] is None and isinstance(result["working_psnr"], float)
    returned = Image.open(io.BytesIO(client.result(reconstruction.id))).convert("RGB")
    assert returned.tobytes() == Image.open(io.BytesIO(image)).convert("RGB").tobytes()
    assert reconstruction.metrics["nfe"] == STEPS - 1

    assert http.delete(f"/v1/inversions/{submitted.inversion_id}").status_code == 204
    with pytest.raises(ApiError) as gone:
        client.inversion(submitted.inversion_id)
    assert gone.value.status == 404 and gone.value.code == "not_found"


def test_multipart_edit_inverts_once_then_hits_the_cache(client: BdiaClient) -> None:
    image = make_png(2)
    first = client.wait(client.edit_image(image, "a gradient", "a blue gradient", steps=STEPS))
    assert first.metrics["inversion_cached"] is False and first.metrics["nfe"] == STEPS + STEPS - 1
    second = client.wait(client.edit_image(image, "a gradient", "a green gradient", steps=STEPS))
    assert second.inversion_id == first.inversion_id
    assert second.metrics["inversion_cached"] is True and second.metrics["nfe"] == STEPS - 1
    assert "cache_hit" in [e.event for e in client.events(second.id)]
    assert client.result(first.id).startswith(b"\x89PNG")


def test_edit_with_its_own_gamma(client: BdiaClient) -> None:
    submitted = client.invert(make_png(4), "a gradient", steps=STEPS)
    job = client.wait(client.edit(submitted.inversion_id, "a red gradient", edit_gamma=0.5))
    assert job.status == "succeeded" and job.params["edit_gamma"] == 0.5
    assert client.result(job.id).startswith(b"\x89PNG")
    with pytest.raises(ApiError) as refused:
        client.edit(submitted.inversion_id, "a red gradient", edit_gamma=1.5)
    assert refused.value.status == 422 and refused.value.code == "invalid_parameter"


def test_masked_edit(client: BdiaClient) -> None:
    mask = Image.new("L", (48, 40), 0)
    mask.paste(255, (0, 0, 24, 40))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    job = client.wait(client.edit_image(make_png(3), "", "a square", mask=buffer.getvalue(), steps=STEPS))
    assert job.params["masked"] is True and job.status == "succeeded"


def test_job_views_and_result_errors(client: BdiaClient, http: httpx.Client) -> None:
    submitted = client.invert(make_png(4), "", steps=STEPS)
    job = client.wait(submitted.job)
    assert set(job.urls) == {"get", "events", "cancel"}
    response = http.get(f"/v1/jobs/{job.id}/result")  # an invert job has no image
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    missing = http.get("/v1/jobs/job_doesnotexist")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_metrics_in_prometheus_format(http: httpx.Client) -> None:
    http.get("/healthz")
    text = http.get("/metrics").text
    assert 'bdia_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "# TYPE bdia_queue_depth gauge" in text and 'bdia_workers{model="tiny-random"}' in text
    assert "bdia_jobs_submitted_total" in text and "bdia_cache_entries" in text
