"""The OpenAPI document's shape, as client generators read it (the generated client itself runs in
tests/e2e/test_generated_client.py): one media type per request body, typed problems, typed images,
security schemes, declared headers, readable operation ids, and only the errors each operation has."""

from __future__ import annotations

from typing import Any

import pytest

PROBLEM = {"schema": {"$ref": "#/components/schemas/ProblemOut"}}


@pytest.fixture
def document(api) -> dict[str, Any]:
    response = api().get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_operation_ids_are_the_route_names(document) -> None:
    ids = {f"{method} {path}": op["operationId"] for method, path, op in _operations(document)}
    assert ids == {
        "POST /v1/inversions": "create_inversion",
        "GET /v1/inversions": "list_inversions",
        "GET /v1/inversions/{inversion_id}": "get_inversion",
        "DELETE /v1/inversions/{inversion_id}": "delete_inversion",
        "GET /v1/inversions/{inversion_id}/latents": "get_inversion_latents",
        "POST /v1/edits": "create_edit",
        "POST /v1/edits/upload": "create_edit_upload",
        "POST /v1/reconstructions": "create_reconstruction",
        "GET /v1/jobs": "list_jobs",
        "GET /v1/jobs/{job_id}": "get_job",
        "GET /v1/jobs/{job_id}/events": "get_job_events",
        "POST /v1/jobs/{job_id}/cancel": "cancel_job",
        "GET /v1/jobs/{job_id}/result": "get_job_result",
        "GET /v1/jobs/{job_id}/mask": "get_job_mask",
        "GET /v1/webhooks/secret": "get_webhook_secret",
        "GET /v1/models": "list_models",
        "GET /healthz": "healthz",
        "GET /readyz": "readyz",
        "GET /metrics": "get_metrics",
    }


def test_each_request_body_has_one_media_type_and_forms_refuse_extra_fields(document) -> None:
    bodies = {
        f"{method} {path}": list(op["requestBody"]["content"])
        for method, path, op in _operations(document)
        if "requestBody" in op
    }
    assert bodies == {
        "POST /v1/inversions": ["multipart/form-data"],
        "POST /v1/edits": ["application/json"],
        "POST /v1/edits/upload": ["multipart/form-data"],
        "POST /v1/reconstructions": ["application/json"],
    }
    schemas = document["components"]["schemas"]
    for name in ("InversionForm", "EditForm", "EditIn", "ReconstructionIn"):
        assert schemas[name]["additionalProperties"] is False, name
    for name, fields in (("InversionForm", ["image"]), ("EditForm", ["image", "mask"])):
        for field in fields:
            assert (
                schemas[name]["properties"][field] | {"type": "string", "format": "binary"}
                == schemas[name]["properties"][field]
            )
    # Optional fields without a value of their own have no null default (a generator would send "None").
    for name, field in [
        ("InversionForm", "model"),
        ("EditForm", "mask"),
        ("EditForm", "edit_gamma"),
        ("EditIn", "guidance_scale"),
    ]:
        prop = schemas[name]["properties"][field]
        assert "default" not in prop and "anyOf" not in prop and field not in schemas[name].get("required", []), prop


def test_errors_are_typed_problems_and_listed_per_operation(document) -> None:
    expected = {
        "POST /v1/inversions": {400, 401, 409, 413, 415, 422, 429, 503},
        "POST /v1/edits": {400, 401, 404, 409, 413, 415, 422, 429, 503},
        "GET /v1/jobs/{job_id}": {401, 404, 503},
        "GET /v1/jobs/{job_id}/result": {401, 404, 409, 503},
        "GET /v1/jobs/{job_id}/mask": {401, 404, 409, 503},
        "GET /v1/jobs": {401, 422, 503},
        "DELETE /v1/inversions/{inversion_id}": {401, 404, 503},
        "GET /healthz": set(),
    }
    for method, path, operation in _operations(document):
        errors = {int(status) for status in operation["responses"] if int(status) >= 400}
        if f"{method} {path}" in expected:
            assert errors == expected[f"{method} {path}"], (method, path)
        for status in errors:
            assert operation["responses"][str(status)]["content"] == {"application/problem+json": PROBLEM}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    problem = document["components"]["schemas"]["ProblemOut"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    assert problem["properties"]["errors"]["anyOf"][0]["items"] == {"$ref": "#/components/schemas/ProblemError"}


def test_responses_are_typed(document) -> None:
    paths, schemas = document["paths"], document["components"]["schemas"]
    result = paths["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert result["image/png"]["schema"] == {"type": "string", "format": "binary"}
    assert result["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    latents = paths["/v1/inversions/{inversion_id}/latents"]["get"]["responses"]["200"]["content"]
    assert latents["application/octet-stream"]["schema"]["format"] == "binary"
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert events == {"text/event-stream": {"schema": {"type": "string"}}}
    job = schemas["JobOut"]["properties"]
    assert job["params"] == {"$ref": "#/components/schemas/JobParams"}
    assert job["metrics"]["$ref"] == "#/components/schemas/JobMetrics"
    assert job["result"]["anyOf"][0] == {"$ref": "#/components/schemas/JobResult"}
    assert job["created_at"]["format"] == "date-time"
    assert job["finished_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    assert schemas["InversionOut"]["properties"]["expires_at"]["anyOf"][0]["format"] == "date-time"
    assert {"nfe", "inversion_cached", "attempts"} <= set(schemas["JobMetrics"]["properties"])
    assert {"latent_max_abs_error", "psnr", "inversion_id", "width"} <= set(schemas["JobResult"]["properties"])
    created = paths["/v1/inversions"]["post"]["responses"]
    assert {r["$ref"] for r in created["200"]["content"]["application/json"]["schema"]["anyOf"]} == {
        "#/components/schemas/InversionOut",
        "#/components/schemas/JobOut",
    }
    assert created["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobOut"}
    assert set(created["202"]["headers"]) == {"Location", "Idempotent-Replayed", "Preference-Applied"}


def test_security_schemes_and_headers_are_declared(document) -> None:
    assert set(document["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path, operation in _operations(document):
        secured = path.startswith("/v1/")
        assert bool(operation.get("security")) == secured, (method, path)
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        if method == "POST":
            assert "Idempotency-Key" in headers, path
        if method == "POST" and path != "/v1/jobs/{job_id}/cancel":
            assert "Prefer" in headers, path
    events = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]
    assert "Last-Event-ID" in {p["name"] for p in events}


def test_docs_page_has_the_authorize_button(api) -> None:
    client = api(api_keys="secret-1")
    assert client.get("/docs").status_code == 200  # open, like the document itself
    assert client.get("/openapi.json").json()["components"]["securitySchemes"]
