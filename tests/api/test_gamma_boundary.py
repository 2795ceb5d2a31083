"""The γ stability bound is one rule: the engine, the CLI and the API answer alike on both sides of it.

With the default bound 30, γ = 0.9 is allowed up to K = 33 levels (0.9^−32 ≈ 29.1) and refused from
K = 34 (0.9^−33 ≈ 32.3): the bound is γ^−(K−1), the growth the inversion's arithmetic really has.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from support import make_png

import bdia
from bdia.cli import main
from bdia.params import DEFAULT_GAMMA_BOUND, InversionParams, gamma_growth

GAMMA = 0.9
ACCEPTED, REFUSED = 33, 34


def test_the_boundary_is_where_the_docs_say() -> None:
    assert gamma_growth(GAMMA, ACCEPTED) <= DEFAULT_GAMMA_BOUND < gamma_growth(GAMMA, REFUSED)


def test_a_vanishing_gamma_is_unstable_not_an_overflow() -> None:
    with pytest.raises(bdia.GammaUnstable):
        InversionParams.create(model="tiny-random", steps=50, gamma=5e-324).check()


@pytest.mark.parametrize("steps,accepted", [(ACCEPTED, True), (REFUSED, False)])
def test_engine_cli_and_api_agree(steps: int, accepted: bool, api: Callable[..., TestClient], tmp_path, capsys) -> None:
    params = InversionParams.create(model="tiny-random", steps=steps, gamma=GAMMA)
    if accepted:
        params.check()
    else:
        with pytest.raises(bdia.GammaUnstable):
            params.check()

    image = tmp_path / "in.png"
    image.write_bytes(make_png())
    argv = [
        "invert",
        str(image),
        "--model",
        "tiny-random",
        "--device",
        "cpu",
        "--no-progress",
        "--steps",
        str(steps),
        "--gamma",
        str(GAMMA),
        "--output",
        str(tmp_path / "inv.safetensors"),
    ]
    code = main(argv)
    err = capsys.readouterr().err
    assert (code == 0) is accepted, err
    assert accepted or ("amplifies" in err and len(err.strip().splitlines()) == 1)

    response = api(model="tiny-random").post(
        "/v1/inversions",
        files={"image": ("in.png", make_png(), "image/png")},
        data={"steps": str(steps), "gamma": str(GAMMA)},
    )
    if accepted:
        assert response.status_code == 202, response.text
    else:
        assert response.status_code == 422 and response.json()["code"] == "gamma_unstable", response.text
