"""The trajectory's serialisation: packed losslessly (bit for bit the same once read back) and smaller."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

import bdia
from bdia.inversion import pack_trajectory, unpack_trajectory


@pytest.fixture(scope="module")
def inversion(tiny_model, test_image) -> bdia.Inversion:
    return bdia.invert(tiny_model, test_image, "a red square", steps=20)


def test_an_inversion_file_round_trips_its_trajectory_bit_for_bit_and_smaller(inversion: bdia.Inversion) -> None:
    assert inversion.trajectory is not None and inversion.trajectory.dtype == torch.int64
    data = inversion.to_bytes()
    back = bdia.Inversion.from_bytes(data)
    assert torch.equal(back.trajectory, inversion.trajectory)
    for name in ("z_hi", "z_lo", "z0"):
        assert torch.equal(getattr(back, name), getattr(inversion, name))
    raw = inversion.trajectory.numel() * inversion.trajectory.element_size()
    stored = load(data)["trajectory_packed"].numel()
    assert stored < raw / 1.3, (stored, raw)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float32])
def test_packing_is_lossless_for_every_state_dtype(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    states = torch.randn(6, 4, 5, 7, generator=generator, dtype=torch.float64).cumsum(0)
    trajectory = (states * 2.0**40).round().to(dtype) if dtype == torch.int64 else states.to(dtype)
    trajectory[0, 0, 0, 0] = -1 if dtype == torch.int64 else -0.0
    packed, info = pack_trajectory(trajectory)
    back = unpack_trajectory(packed, info)
    assert back.dtype == dtype and back.shape == trajectory.shape
    assert back.view(torch.uint8).equal(trajectory.view(torch.uint8))  # every bit, signed zeros included


def test_a_file_with_a_plain_trajectory_still_loads(inversion: bdia.Inversion) -> None:
    """Files written before packing hold the trajectory as a plain tensor."""
    from safetensors.torch import save

    from bdia.inversion import read_metadata

    data = inversion.to_bytes()
    tensors = load(data)
    tensors["trajectory"] = inversion.trajectory.clone()
    del tensors["trajectory_packed"]
    meta = {k: v for k, v in read_metadata(data).items() if k != "trajectory"}
    back = bdia.Inversion.from_bytes(save(tensors, metadata=meta))
    assert torch.equal(back.trajectory, inversion.trajectory)


def test_a_damaged_packed_trajectory_is_refused(inversion: bdia.Inversion) -> None:
    packed, info = pack_trajectory(inversion.trajectory)
    with pytest.raises(ValueError):
        unpack_trajectory(packed, {**info, "shape": [1, 2, 3]})
    with pytest.raises(ValueError):
        unpack_trajectory(packed, {**info, "encoding": "lz4"})
