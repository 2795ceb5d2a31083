"""Every bad input named in docs/api.md#errors gets its problem+json status and stable code, and nothing is queued.

These run the API in-process (no worker is needed to refuse a request) over a real Redis.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from support import make_png

from bdia.jobqueue.keys import Keys

MAX_BYTES = 60_000
MAX_PIXELS = 200 * 200


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels, followed by almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _noisy(fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    image = Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _solid_png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "grey").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def api(api: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """The shared in-process API factory, with small limits (any setting can still be overridden)."""
    return functools.partial(api, max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, max_prompt_chars=50)


def _assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status and body["code"] == code, body
    return body


def _assert_nothing_queued(redis_client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    assert redis_client.xlen(keys.queue("tiny-random")) == 0
    assert not list(redis_client.scan_iter(match=f"{prefix}:job:*"))


INVERSION_CASES = [
    # (name, files, form fields, status, code)
    ("over the byte limit", {"image": b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_BYTES}, {}, 413, "image_too_large"),
    ("over the pixel limit", {"image": _solid_png((300, 300))}, {}, 413, "image_too_large"),
    ("header claims 10 gigapixels", {"image": _png_header_only(100_000, 100_000)}, {}, 413, "image_too_large"),
    ("a GIF", {"image": b"GIF89a" + b"\0" * 64}, {}, 415, "unsupported_media_type"),
    ("text claiming to be a PNG", {"image": b"hello, world"}, {}, 415, "unsupported_media_type"),
    ("a truncated PNG", {"image": _noisy("PNG")[:2000]}, {}, 422, "invalid_image"),
    ("a truncated JPEG", {"image": _noisy("JPEG")[:600]}, {}, 422, "invalid_image"),
    ("a corrupt WebP", {"image": _noisy("WEBP")[:40] + b"\xff" * 200}, {}, 422, "invalid_image"),
    ("an empty file", {"image": b""}, {}, 422, "invalid_image"),
    ("no image", {}, {"prompt": "x"}, 422, "invalid_parameter"),
    ("the image as a text field", {}, {"image": "not a file"}, 422, "invalid_parameter"),
    ("a prompt over the limit", {"image": make_png()}, {"prompt": "x" * 51}, 422, "invalid_parameter"),
    ("steps 0", {"image": make_png()}, {"steps": "0"}, 422, "invalid_parameter"),
    ("steps over the limit", {"image": make_png()}, {"steps": "1001"}, 422, "invalid_parameter"),
    ("steps not a number", {"image": make_png()}, {"steps": "many"}, 422, "invalid_parameter"),
    ("strength 0", {"image": make_png()}, {"strength": "0"}, 422, "invalid_parameter"),
    ("strength above 1", {"image": make_png()}, {"strength": "1.5"}, 422, "invalid_parameter"),
    ("gamma 0", {"image": make_png()}, {"gamma": "0"}, 422, "invalid_parameter"),
    ("gamma above 1", {"image": make_png()}, {"gamma": "1.2"}, 422, "invalid_parameter"),
    ("gamma unstable", {"image": make_png()}, {"gamma": "0.5", "steps": "50"}, 422, "gamma_unstable"),
    ("gamma beyond any float", {"image": make_png()}, {"gamma": "5e-324", "exact": "false"}, 422, "gamma_unstable"),
    ("negative guidance", {"image": make_png()}, {"guidance_scale": "-1"}, 422, "invalid_parameter"),
    ("exact not a boolean", {"image": make_png()}, {"exact": "perhaps"}, 422, "invalid_parameter"),
    ("an unknown model", {"image": make_png()}, {"model": "sd-9"}, 422, "unknown_model"),
    ("an unknown method", {"image": make_png()}, {"method": "magic"}, 422, "invalid_parameter"),
    ("an unknown field", {"image": make_png()}, {"colour": "red"}, 422, "invalid_parameter"),
]


@pytest.mark.parametrize(
    ("files", "fields", "status", "code"), [c[1:] for c in INVERSION_CASES], ids=[c[0] for c in INVERSION_CASES]
)
def test_bad_inversion_requests(api, redis_client, prefix, files, fields, status, code) -> None:
    client = api()
    upload = {name: ("upload.png", data, "image/png") for name, data in files.items()}
    if not upload:  # still send multipart
        upload = {"other": ("x.txt", b"", "text/plain")} if "image" not in fields else None
    body = _assert_problem(client.post("/v1/inversions", files=upload, data=fields), status, code)
    if status == 422:
        assert body["errors"] and all({"loc", "msg", "type"} <= e.keys() for e in body["errors"])
    _assert_nothing_queued(redis_client, prefix)


def test_bad_edit_and_reconstruction_requests(api, redis_client, prefix) -> None:
    client = api()
    body = _assert_problem(client.post("/v1/edits", json={"inversion_id": "inv_x"}), 422, "invalid_parameter")
    assert body["errors"][0]["loc"] == ["body", "prompt"]
    _assert_problem(client.post("/v1/edits", json={"inversion_id": "inv_x", "prompt": "p"}), 404, "not_found")
    _assert_problem(
        client.post("/v1/edits", json={"inversion_id": "inv_x", "prompt": "p", "seed": 1}), 422, "invalid_parameter"
    )
    _assert_problem(
        client.post("/v1/edits", json={"inversion_id": "inv_x", "prompt": "p" * 51}), 422, "invalid_parameter"
    )
    _assert_problem(
        client.post("/v1/edits", json={"inversion_id": "inv_x", "prompt": "p", "guidance_scale": -2}),
        422,
        "invalid_parameter",
    )
    bad_json = client.post("/v1/edits", content=b"{not json", headers={"content-type": "application/json"})
    _assert_problem(bad_json, 400, "bad_request")
    _assert_problem(
        client.post("/v1/edits", content=b"hi", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"
    )
    files = {"image": ("a.gif", b"GIF89a" + b"\0" * 20, "image/gif")}
    _assert_problem(client.post("/v1/edits", files=files, data={"prompt": "p"}), 415, "unsupported_media_type")
    files = {"image": ("a.png", make_png(), "image/png")}
    _assert_problem(client.post("/v1/edits", files=files, data={}), 422, "invalid_parameter")
    files = {"image": ("a.png", make_png(), "image/png"), "mask": ("m.png", b"garbage", "image/png")}
    _assert_problem(client.post("/v1/edits", files=files, data={"prompt": "p"}), 415, "unsupported_media_type")

    body = _assert_problem(client.post("/v1/reconstructions", json={}), 422, "invalid_parameter")
    assert body["errors"][0]["loc"] == ["body", "inversion_id"]
    _assert_problem(client.post("/v1/reconstructions", content=b"x"), 422, "invalid_parameter")
    _assert_problem(client.post("/v1/reconstructions", json={"inversion_id": "inv_x"}), 404, "not_found")
    _assert_problem(client.post("/v1/inversions", json={"prompt": "p"}), 415, "unsupported_media_type")
    _assert_nothing_queued(redis_client, prefix)


def test_unknown_resources_and_methods(api, redis_client, prefix) -> None:
    client = api()
    for method, path in [
        ("GET", "/v1/jobs/job_x"),
        ("GET", "/v1/jobs/job_x/events"),
        ("GET", "/v1/jobs/job_x/result"),
        ("POST", "/v1/jobs/job_x/cancel"),
        ("GET", "/v1/inversions/inv_x"),
        ("GET", "/v1/inversions/inv_x/latents"),
        ("DELETE", "/v1/inversions/inv_x"),
        ("GET", "/v1/nothing-here"),
    ]:
        _assert_problem(client.request(method, path), 404, "not_found")
    _assert_problem(client.put("/v1/inversions"), 405, "method_not_allowed")
    too_long = {"Idempotency-Key": "k" * 300}
    _assert_problem(
        client.post("/v1/reconstructions", json={"inversion_id": "i"}, headers=too_long), 422, "invalid_parameter"
    )
    _assert_nothing_queued(redis_client, prefix)


def test_unauthorized_rate_limited_and_queue_full(api, redis_client, prefix) -> None:
    locked = api(api_keys="secret-1,secret-2")
    _assert_problem(locked.get("/v1/models"), 401, "unauthorized")
    _assert_problem(locked.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert locked.get("/v1/models", headers={"Authorization": "Bearer secret-2"}).status_code == 200
    assert locked.get("/healthz").status_code == 200

    limited = api(rate_limit_per_minute=2)
    for _ in range(2):
        _assert_problem(limited.post("/v1/reconstructions", json={"inversion_id": "inv_x"}), 404, "not_found")
    response = limited.post("/v1/reconstructions", json={"inversion_id": "inv_x"})
    _assert_problem(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0

    full = api(max_queue=0)
    files = {"image": ("a.png", make_png(), "image/png")}
    response = full.post("/v1/inversions", files=files, data={"steps": "4"})
    _assert_problem(response, 503, "queue_full")
    assert "Retry-After" in response.headers
    _assert_nothing_queued(redis_client, prefix)
