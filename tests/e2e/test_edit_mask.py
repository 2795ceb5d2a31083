"""The edit mask over the real stack: ``GET /v1/jobs/{id}/mask`` gives the owner a PNG of the upload's
size (white = changed) beside a result whose pixels outside it are the upload's own; another tenant
and a job without a mask get 404 problem+json."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support import ALICE, BOB, make_png

from bdia.client import ApiError, BdiaClient

STEPS = 4
UPLOAD = (77, 45)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_mask_is_the_owners_at_the_uploads_size(production) -> None:
    upload = make_png(21, UPLOAD)
    painted = Image.new("L", UPLOAD, 0)
    painted.paste(255, (0, 0, 30, 45))
    with BdiaClient(production.url, api_key=ALICE, timeout=30) as alice:
        edit = alice.wait(alice.edit_image(upload, "a gradient", "a red gradient", mask=_png(painted), steps=STEPS))
        assert edit.status == "succeeded" and edit.result["mask"] == f"/v1/jobs/{edit.id}/mask"
        assert edit.urls["mask"] == edit.result["mask"]
        mask = Image.open(io.BytesIO(alice.mask(edit.id)))
        result = Image.open(io.BytesIO(alice.result(edit.id))).convert("RGB")
        assert mask.size == result.size == UPLOAD == (edit.result["width"], edit.result["height"])
        inside = np.asarray(mask.convert("L")) > 0
        assert inside[:, :30].all() and not inside.all()
        assert edit.result["mask_fraction"] == pytest.approx(inside.mean())
        source = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))
        assert np.array_equal(np.asarray(result)[~inside], source[~inside])  # the upload's own pixels

        reconstruction = alice.wait(alice.reconstruct(edit.inversion_id))
        assert "mask" not in reconstruction.result and "mask" not in reconstruction.urls
        with pytest.raises(ApiError) as none:
            alice.mask(reconstruction.id)
        assert none.value.status == 404 and none.value.code == "not_found"
        assert "no edit mask" in none.value.detail

    with BdiaClient(production.url, api_key=BOB, timeout=30) as bob:
        response = bob.http.get(f"/v1/jobs/{edit.id}/mask")
        assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_found" and response.content.find(b"\x89PNG") == -1
