"""The numerics of docs/numerics.md on the tiny random model: grids, round trips, exactness, guards."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

import bdia
from bdia import imaging, sampling
from bdia.batching import Layout, bind, conditioning, drive
from bdia.grid import LevelGrid
from bdia.params import InversionParams

SD_SCHEDULE = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 50])
def test_grid_takes_the_schedulers_own_timesteps(spacing, steps):
    scheduler = DDIMScheduler(timestep_spacing=spacing, **SD_SCHEDULE)
    grid = LevelGrid.from_scheduler(scheduler, steps)
    scheduler.set_timesteps(steps)
    assert list(grid.timesteps[1:]) == sorted(int(t) for t in scheduler.timesteps)
    assert grid.alphas_cumprod[0] == float(scheduler.final_alpha_cumprod)
    for i in range(1, steps + 1):
        assert grid.alphas_cumprod[i] == float(scheduler.alphas_cumprod.double()[grid.timestep(i)])


def test_grid_refuses_bad_steps():
    scheduler = DDIMScheduler(**SD_SCHEDULE)
    for bad in (0, -3, 1000, 1001):  # 1000 leading steps with offset 1 would reach timestep 1000
        with pytest.raises(bdia.InvalidParameter, match="steps"):
            LevelGrid.from_scheduler(scheduler, bad)


def _spec_bdia_invert(grid_alphas, eps, z0, levels, gamma):
    """docs/numerics.md#bdia written out directly, in float64, for comparison."""
    abar = grid_alphas

    def d(z, e, i, j):
        return math.sqrt(abar[j]) * (z - math.sqrt(1 - abar[i]) * e) / math.sqrt(abar[i]) + math.sqrt(1 - abar[j]) * e

    z = [z0.double()]
    z.append(d(z[0], eps(z[0], 1), 0, 1))
    for i in range(1, levels):
        e = eps(z[i], i)
        z.append((z[i - 1] - d(z[i], e, i, i - 1)) / gamma + d(z[i], e, i, i + 1))
    return z


def _spec_bdia_sample(abar, eps, hi, lo, start, gamma):
    def d(z, e, i, j):
        return math.sqrt(abar[j]) * (z - math.sqrt(1 - abar[i]) * e) / math.sqrt(abar[i]) + math.sqrt(1 - abar[j]) * e

    for i in range(start - 1, 0, -1):
        e = eps(lo, i)
        hi, lo = lo, gamma * (hi - d(lo, e, i, i + 1)) + d(lo, e, i, i - 1)
    return lo


@pytest.mark.parametrize("gamma", [1.0, 0.94])
def test_bdia_matches_a_direct_implementation_of_the_spec(tiny_model, test_image, gamma):
    grid = LevelGrid.from_scheduler(tiny_model.scheduler, 20)
    eps = bdia.Denoiser(tiny_model, grid, "a test", guidance_scale=2.0)
    z0 = imaging.encode(tiny_model, imaging.fit_to_model(test_image, tiny_model.height, tiny_model.width))
    lattice = sampling.FloatLattice(torch.float64)
    cond = conditioning(tiny_model, grid, "a test", 2.0)
    walk = sampling.bdia_invert(grid, z0, gamma=gamma, lattice=lattice)
    hi, lo, _ = drive(tiny_model, bind(walk, cond, Layout(), total=20, stage="invert"))
    expected = _spec_bdia_invert(grid.alphas_cumprod, eps, z0, 20, gamma)
    assert torch.allclose(hi, expected[20], rtol=0, atol=1e-10)
    assert torch.allclose(lo, expected[19], rtol=0, atol=1e-10)
    walk = sampling.bdia_sample(grid, hi, lo, gamma=gamma, lattice=lattice)
    back = drive(tiny_model, bind(walk, cond, Layout(), total=19, stage="regenerate")).lo
    direct = _spec_bdia_sample(grid.alphas_cumprod, eps, hi, lo, 20, gamma)
    assert torch.allclose(back, direct, rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps,strength", [(10, 1.0), (50, 1.0), (200, 1.0), (50, 0.6), (30, 0.25)])
def test_exact_mode_round_trip_is_bit_exact(tiny_model, test_image, steps, strength):
    inversion = bdia.invert(tiny_model, test_image, "a red square", steps=steps, strength=strength, guidance_scale=3.0)
    assert inversion.z_hi.dtype == torch.int64
    assert inversion.level == round(steps * strength)
    assert inversion.nfe == inversion.level
    result = bdia.regenerate(tiny_model, inversion)
    assert result.nfe == inversion.level - 1
    assert result.latent_max_abs_error == 0.0
    assert result.fingerprint_match and result.exact
    assert torch.equal(result.z0, inversion.lattice.decode(inversion.z0))


def test_round_trip_errors_by_state(tiny_model):
    exact = bdia.roundtrip(tiny_model, steps=50, exact=True)
    f64 = bdia.roundtrip(tiny_model, steps=50, exact=False, state_dtype="float64")
    f32 = bdia.roundtrip(tiny_model, steps=50, exact=False, state_dtype="float32")
    ddim = bdia.roundtrip(tiny_model, method="ddim", steps=50, exact=False)
    assert exact["bit_exact"] and exact["max_abs_error"] == 0.0
    assert f64["rel_error"] <= 1e-12
    assert f32["rel_error"] <= 1e-4
    # The inexact baseline: orders of magnitude above BDIA's float32 round trip.
    assert ddim["rel_error"] > 1e-3 > 100 * f32["rel_error"]
    assert not ddim["bit_exact"]


def test_edict_spends_twice_the_network_evaluations(tiny_model):
    edict = bdia.roundtrip(tiny_model, method="edict", steps=20, exact=False)
    bdia_ = bdia.roundtrip(tiny_model, method="bdia", steps=20, exact=False)
    assert edict["nfe"] == 4 * 20
    assert bdia_["nfe"] == 20 + 19
    assert edict["rel_error"] < 1e-6


def test_gamma_guard_refuses_unstable_inversions(tiny_model, test_image):
    with pytest.raises(bdia.GammaUnstable, match="amplifies"):
        bdia.invert(tiny_model, test_image, steps=50, gamma=0.5)
    for gamma in (0.0, -0.1, 1.5):
        with pytest.raises(bdia.InvalidParameter, match="gamma"):
            bdia.invert(tiny_model, test_image, steps=10, gamma=gamma)
    # 0.94 over 20 levels amplifies by 0.94^-19 ≈ 3.2: allowed, float64 state, near-exact round trip.
    inversion = bdia.invert(tiny_model, test_image, steps=20, gamma=0.94)
    assert inversion.z_hi.dtype == torch.float64
    assert bdia.regenerate(tiny_model, inversion).latent_max_abs_error < 1e-10


def test_inversion_bytes_round_trip_bit_exactly(tiny_model, test_image):
    inversion = bdia.invert(tiny_model, test_image, "a blue circle", steps=12, strength=0.75, guidance_scale=2.0)
    data = inversion.to_bytes()
    back = bdia.Inversion.from_bytes(data)
    assert back.params == inversion.params
    assert back.fingerprint == inversion.fingerprint and back.nfe == inversion.nfe
    for name in ("z_hi", "z_lo", "z0", "trajectory"):
        assert torch.equal(getattr(back, name), getattr(inversion, name).cpu()), name
    assert back.metadata() == inversion.metadata()
    assert bdia.regenerate(tiny_model, back).latent_max_abs_error == 0.0
    with pytest.raises(bdia.InvalidInversion):
        bdia.Inversion.from_bytes(data[: len(data) // 2])
    with pytest.raises(bdia.InvalidInversion):
        bdia.Inversion.from_bytes(b"not safetensors at all")


def test_masked_edit_keeps_the_source_outside_the_mask(tiny_model, test_image):
    inversion = bdia.invert(tiny_model, test_image, "a red square", steps=16)
    h, w = inversion.z0.shape[-2:]  # the working size keeps the image's aspect ratio
    mask = torch.zeros(h, w)
    mask[: h // 2] = 1.0
    edit = bdia.regenerate(tiny_model, inversion, "a green triangle", mask=mask)
    source = inversion.lattice.decode(inversion.z0)
    keep = ~(mask.bool())
    assert torch.equal(edit.z0[..., keep], source[..., keep])
    assert not torch.equal(edit.z0[..., ~keep], source[..., ~keep])


def test_an_edit_may_regenerate_with_its_own_gamma(tiny_model, test_image):
    inversion = bdia.invert(tiny_model, test_image, "a red square", steps=12)
    same = bdia.regenerate(tiny_model, inversion, gamma=1.0)
    assert same.exact and same.latent_max_abs_error == 0.0
    damped = bdia.regenerate(tiny_model, inversion, gamma=0.5)
    assert not damped.exact and damped.z0.dtype == torch.float64 and damped.latent_max_abs_error > 0
    masked = bdia.regenerate(tiny_model, inversion, "a green triangle", gamma=0.0, mask=torch.zeros(48, 64))
    assert torch.equal(masked.z0, inversion.lattice.decode(inversion.z0))
    with pytest.raises(bdia.InvalidParameter, match="gamma"):
        bdia.regenerate(tiny_model, inversion, gamma=1.5)
    ddim = bdia.invert(tiny_model, test_image, steps=6, method="ddim", exact=False)
    assert bdia.Inversion.from_bytes(ddim.to_bytes()).z_hi.shape == ddim.z_hi.shape
    with pytest.raises(bdia.InvalidParameter, match="BDIA"):
        bdia.regenerate(tiny_model, ddim, gamma=0.5)


def test_params_refuse_bad_values():
    for kwargs, word in [
        ({"steps": 0}, "steps"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"method": "euler"}, "method"),
        ({"guidance_scale": -1.0}, "guidance"),
    ]:
        with pytest.raises(bdia.InvalidParameter, match=word):
            InversionParams.create(model="m", **kwargs).check()


@pytest.mark.parametrize("kwargs", [{"steps": 1, "gamma": 0.9}, {"steps": 10, "strength": 0.05, "gamma": 0.9}])
def test_one_level_inversions_serialise_and_reconstruct(tiny_model, test_image, kwargs):
    """A single level (steps = 1, or a tiny strength) leaves states aliasing z0: the bytes must still be written."""
    inversion = bdia.invert(tiny_model, test_image, "x", **kwargs)
    back = bdia.Inversion.from_bytes(inversion.to_bytes())
    assert back.level == 1 and torch.equal(back.z_lo, inversion.z_lo)
    assert bdia.regenerate(tiny_model, back).latent_max_abs_error < 1e-12
