"""The OpenAPI document as a generator uses it: openapi-python-client (the pinned dev dependency) makes a
client from the live ``/openapi.json`` into a temporary folder, and that client, unedited, runs the whole
flow against the real deployment: upload → inversion job → wait → edit → result PNG → reconstruction,
with every error parsed into the typed problem model. Offline: the generator needs nothing but the
document (and ruff, from this venv, to format what it writes)."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from PIL import Image
from support import ALICE, make_png

PACKAGE = "bdia_generated_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def generated(deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client generated from the deployment's own OpenAPI document, importable as ``PACKAGE``."""
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} is missing: install the dev extra (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("generated")
    document = root / "openapi.json"
    document.write_bytes(httpx.get(f"{deployment.url}/openapi.json", timeout=30).content)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--meta", "none", "--output-path", str(root / PACKAGE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr  # every operation generated
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class _Operations:
    """The generated modules of one tag's operations, imported on first use (``ops.get_job.sync(...)``)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __getattr__(self, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.{self.tag}.{name}")


def _api(generated: ModuleType, tag: str) -> _Operations:
    assert generated.__name__ == PACKAGE
    return _Operations(tag)


def test_the_generated_client_runs_the_whole_flow(generated: ModuleType, deployment) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    inversions, edits, jobs, system = (_api(generated, n) for n in ("inversions", "edits", "jobs", "system"))
    # The test deployment is open: any token is accepted (a keyed one checks it, see the next test).
    client = generated.AuthenticatedClient(
        base_url=deployment.url, token="unused", timeout=httpx.Timeout(120.0), raise_on_unexpected_status=True
    )
    with client:
        listed = system.list_models.sync(client=client)
        assert isinstance(listed, models.ModelsOut) and listed.default == "tiny-random"

        # Upload → inversion job; the optional fields left out are not sent (no "None" model).
        form = models.InversionForm(
            image=types.File(payload=io.BytesIO(make_png(60)), file_name="a.png", mime_type="image/png"),
            prompt="a gradient",
            steps=4,
        )
        queued = inversions.create_inversion.sync_detailed(client=client, body=form)
        assert queued.status_code == 202 and isinstance(queued.parsed, models.JobOut)
        assert queued.parsed.kind == models.JobOutKind.INVERT and queued.headers["location"].endswith(queued.parsed.id)
        inversion_id = queued.parsed.inversion_id

        # Wait for it by polling (the edits below wait in the request instead: Prefer: wait=N).
        deadline = time.monotonic() + 120
        finished = jobs.get_job.sync(client=client, job_id=queued.parsed.id)
        while finished.status in (models.JobOutStatus.QUEUED, models.JobOutStatus.RUNNING):
            assert time.monotonic() < deadline
            time.sleep(0.1)
            finished = jobs.get_job.sync(client=client, job_id=finished.id)
        assert finished.status == models.JobOutStatus.SUCCEEDED
        assert finished.result.inversion_id == inversion_id and finished.metrics.nfe == 4
        assert finished.finished_at >= finished.created_at  # typed timestamps

        ready = inversions.get_inversion.sync(client=client, inversion_id=inversion_id)
        assert isinstance(ready, models.InversionOut) and ready.status == models.InversionOutStatus.READY
        assert ready.params.steps == 4 and ready.expires_at > ready.created_at
        latents = inversions.get_inversion_latents.sync(client=client, inversion_id=inversion_id)
        assert isinstance(latents, types.File) and latents.payload.read(8)

        # Edit, waiting for it in the request.
        edited = edits.create_edit.sync_detailed(
            client=client, body=models.EditIn(inversion_id=inversion_id, prompt="a red gradient"), prefer="wait=60"
        )
        assert edited.status_code == 200 and edited.headers["preference-applied"] == "wait=60"
        edit = edited.parsed
        assert edit.status == models.JobOutStatus.SUCCEEDED and edit.params.prompt == "a red gradient"
        assert edit.metrics.inversion_cached is True and edit.result.content_type == "image/png"

        # The result: PNG bytes.
        result = jobs.get_job_result.sync(client=client, job_id=edit.id)
        assert isinstance(result, types.File)
        png = result.payload.read()
        assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (
            edit.result.width,
            edit.result.height,
        )

        # The one-call form of an edit (the image uploaded again: its inversion is reused), then the job's
        # events as text.
        upload = models.EditForm(
            image=types.File(payload=io.BytesIO(make_png(60)), file_name="a.png", mime_type="image/png"),
            source_prompt="a gradient",
            prompt="a blue gradient",
            steps=4,
            webhook_events=[models.EditFormWebhookEventsItem.COMPLETED],
        )
        uploaded = edits.create_edit_upload.sync(client=client, body=upload, prefer="wait=60")
        assert isinstance(uploaded, models.JobOut) and uploaded.inversion_id == inversion_id
        assert uploaded.status == models.JobOutStatus.SUCCEEDED and uploaded.metrics.inversion_cached
        events = jobs.get_job_events.sync(client=client, job_id=uploaded.id)
        assert isinstance(events, str) and "event: queued" in events and "event: succeeded" in events

        # Reconstruction: exact.
        reconstruction = edits.create_reconstruction.sync(
            client=client, body=models.ReconstructionIn(inversion_id=inversion_id), prefer="wait=60"
        )
        assert reconstruction.status == models.JobOutStatus.SUCCEEDED
        assert reconstruction.result.latent_max_abs_error == 0.0 and reconstruction.result.exact is True

        # Listing: the tenant's jobs, newest first, filtered.
        page = jobs.list_jobs.sync(client=client, kind=[models.ListJobsKindItem.RECONSTRUCT], limit=5)
        assert isinstance(page, models.JobList) and page.items[0].id == reconstruction.id
        assert all(job.kind == models.JobOutKind.RECONSTRUCT for job in page.items)
        listed_inversions = inversions.list_inversions.sync(
            client=client, status=[models.ListInversionsStatusItem.READY]
        )
        assert inversion_id in [item.inversion_id for item in listed_inversions.items]

        # Errors are typed problems: 404, 422 (with its errors list), an unknown model.
        missing = jobs.get_job.sync_detailed(client=client, job_id="job_nope")
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ProblemOut)
        assert missing.parsed.code == "not_found" and missing.parsed.instance == "/v1/jobs/job_nope"
        refused = edits.create_edit.sync_detailed(
            client=client, body=models.EditIn(inversion_id=inversion_id, prompt="x", edit_gamma=1.5)
        )
        assert refused.status_code == 422 and isinstance(refused.parsed, models.ProblemOut)
        assert refused.parsed.code == "invalid_parameter"
        (error,) = refused.parsed.errors
        assert isinstance(error, models.ProblemError) and error.loc == ["body", "edit_gamma"]
        not_ready = jobs.get_job_result.sync_detailed(client=client, job_id=finished.id)  # an invert job
        assert not_ready.status_code == 404 and not_ready.parsed.code == "not_found"
        unknown = inversions.create_inversion.sync(
            client=client,
            body=models.InversionForm(
                image=types.File(payload=io.BytesIO(make_png(61)), file_name="b.png"), model="sd-9", steps=4
            ),
        )
        assert isinstance(unknown, models.ProblemOut) and unknown.code == "unknown_model"
        assert inversions.delete_inversion.sync_detailed(client=client, inversion_id=inversion_id).status_code == 204


def test_the_generated_client_authenticates_with_a_key(generated: ModuleType, production) -> None:
    models, system = importlib.import_module(f"{PACKAGE}.models"), _api(generated, "system")
    with generated.AuthenticatedClient(base_url=production.url, token=ALICE, timeout=30.0) as client:
        assert isinstance(system.list_models.sync(client=client), models.ModelsOut)
    with generated.AuthenticatedClient(base_url=production.url, token="wrong", timeout=30.0) as client:
        refused = system.list_models.sync_detailed(client=client)
    assert refused.status_code == 401 and refused.parsed.code == "unauthorized"
