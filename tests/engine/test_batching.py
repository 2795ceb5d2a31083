"""Continuous batching keeps exactness (docs/numerics.md#batch-layouts): the batched evaluator, jobs side by side,
and a real batched worker process with a real Redis."""

from __future__ import annotations

import pytest
import torch

from bdia.batching import Lane, Layout, Request, advance, bind, conditioning, drive, evaluate, plan
from bdia.denoiser import Denoiser
from bdia.grid import LevelGrid
from bdia.ops import inverting, layout_fingerprint, regenerate, regenerating
from bdia.params import InversionParams
from bdia.sampling import Progress, bdia_invert

P = Progress(1, 1, "test")


@pytest.fixture(scope="module")
def v_model():
    import bdia

    return bdia.load_model("tiny-random-v", device="cpu")


def _latent(model, seed: int) -> torch.Tensor:
    return torch.randn((1, *model.latent_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_predict_takes_one_timestep_per_row(tiny_model) -> None:
    x = torch.randn((3, *tiny_model.latent_shape))
    emb = tiny_model.encode_prompt(["a", "b", "c"])
    scalar = tiny_model.predict(x, 500, emb)
    assert torch.equal(tiny_model.predict(x, torch.tensor([500, 500, 500]), emb), scalar)
    mixed = tiny_model.predict(x, torch.tensor([500, 20, 500]), emb)
    assert torch.equal(mixed[0], scalar[0]) and not torch.equal(mixed[1], scalar[1])


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("which", ["tiny_model", "v_model"])
def test_same_slot_any_neighbours_same_bits_as_the_denoiser(which: str, guidance: float, request) -> None:
    model = request.getfixturevalue(which)
    grid, other_grid = LevelGrid.from_scheduler(model.scheduler, 10), LevelGrid.from_scheduler(model.scheduler, 7)
    z = _latent(model, 0)
    cond = conditioning(model, grid, "a red square", guidance, "blurry")
    for layout in (Layout(1, 0), Layout(4, 2)):
        reference = Denoiser(
            model,
            grid,
            "a red square",
            guidance_scale=guidance,
            negative_prompt="blurry",
            batch_size=layout.batch_size,
            slot=layout.slot,
        )(z, 5)
        alone = evaluate(model, [Request(z, 5, cond, layout, P)])[0]
        assert torch.equal(alone, reference) and alone.dtype == torch.float64
        if layout.batch_size == 1:
            continue
        # Different neighbours: other states, levels, grids, prompts and state dtypes in the other slots.
        for seed, prompt in ((1, "a blue circle"), (2, "")):
            other = conditioning(model, other_grid, prompt, guidance)
            neighbours = [Request(_latent(model, seed).float(), 3, other, Layout(4, s), P) for s in (0, 1, 3)]
            batched = evaluate(model, [*neighbours, Request(z, 5, cond, layout, P)])
            assert torch.equal(batched[-1], reference)
            assert all(e.dtype == torch.float32 for e in batched[:-1])


def test_plan_one_call_per_layout_and_free_slot(tiny_model) -> None:
    grid = LevelGrid.from_scheduler(tiny_model.scheduler, 4)
    plain, guided = conditioning(tiny_model, grid, "x"), conditioning(tiny_model, grid, "x", 3.0)
    z = _latent(tiny_model, 0)
    requests = [
        Request(z, 1, c, Layout(b, s), P)
        for c, b, s in [
            (plain, 4, 0),
            (plain, 4, 1),
            (guided, 4, 2),
            (plain, 4, 0),
            (plain, 1, 0),
            (guided, 4, 3),
            (plain, 4, 2),
        ]
    ]
    assert plan(requests) == [[0, 1, 6], [2, 5], [3], [4]]


def _jobs(model):
    """Several different jobs: inversions with their own steps, prompts, guidance, method and state."""
    z0 = [_latent(model, seed) * 0.5 for seed in range(4)]
    params = [
        InversionParams(model=model.name, prompt="a cat", steps=8),
        InversionParams(model=model.name, prompt="a dog", steps=6, guidance_scale=3.0, negative_prompt="ugly"),
        InversionParams(model=model.name, steps=10, strength=0.5, exact=False, state_dtype="float32"),
        InversionParams(model=model.name, prompt="edict", steps=5, method="edict", exact=False),
    ]
    return z0, params


def test_jobs_side_by_side_match_jobs_alone_bit_for_bit(tiny_model) -> None:
    z0, params = _jobs(tiny_model)
    layouts = [Layout(4, s) for s in (2, 0, 3, 1)]
    alone = [
        drive(tiny_model, inverting(tiny_model, z, p, layout=layout))
        for z, p, layout in zip(z0, params, layouts, strict=True)
    ]
    # Side by side, joining at different steps (continuous batching), in the same layouts.
    lanes: list[Lane] = []
    for step in range(40):
        if step < len(params):
            lanes.append(Lane(inverting(tiny_model, z0[step], params[step], layout=layouts[step])))
        advance(tiny_model, lanes)
    assert all(lane.done for lane in lanes), [lane.error for lane in lanes]
    for lane, reference, layout in zip(lanes, alone, layouts, strict=True):
        inversion = lane.result
        for name in ("z_hi", "z_lo", "z0"):
            assert torch.equal(getattr(inversion, name), getattr(reference, name))
        assert inversion.fingerprint == reference.fingerprint
        assert (inversion.fingerprint["batch_size"], inversion.fingerprint["slot"]) == ("4", str(layout.slot))
        assert lane.evaluations == inversion.nfe


def test_reconstruction_in_a_mixed_batch_is_exact_and_a_layout_mismatch_is_near_exact(tiny_model) -> None:
    z0, params = _jobs(tiny_model)
    inversions = [
        drive(tiny_model, inverting(tiny_model, z0[i], params[i], layout=Layout(4, s))) for i, s in ((0, 1), (1, 3))
    ]
    # Reconstruct both (their own layouts) beside an edit of the first in another slot.
    lanes = [
        Lane(regenerating(tiny_model, inversions[0])),
        Lane(regenerating(tiny_model, inversions[1])),
        Lane(regenerating(tiny_model, inversions[0], "a tiger", guidance_scale=5.0, layout=Layout(4, 0))),
    ]
    while any(lane.live for lane in lanes):
        advance(tiny_model, lanes)
    for lane in lanes[:2]:
        regen = lane.result
        assert regen.exact and regen.fingerprint_match and regen.latent_max_abs_error == 0.0
    assert not lanes[2].result.fingerprint_match
    # Another layout: near-exact, and said so.
    other = regenerate(tiny_model, inversions[0], layout=Layout(2, 0))
    assert other.fingerprint_match is False and other.exact is False
    assert other.fingerprint == layout_fingerprint(tiny_model, Layout(2, 0))
    assert other.latent_max_abs_error < 1e-3


def test_a_failing_job_leaves_its_neighbours_running(tiny_model) -> None:
    grid = LevelGrid.from_scheduler(tiny_model.scheduler, 4)
    cond = conditioning(tiny_model, grid, "")

    def broken():
        yield from bind(bdia_invert(grid, _latent(tiny_model, 0), levels=2), cond, Layout(2, 0), total=2, stage="x")
        raise ValueError("boom")

    good = Lane(
        inverting(
            tiny_model, _latent(tiny_model, 1), InversionParams(model=tiny_model.name, steps=4), layout=Layout(2, 1)
        )
    )
    lanes = [Lane(broken()), good]
    while any(lane.live for lane in lanes):
        advance(tiny_model, lanes)
    assert isinstance(lanes[0].error, ValueError) and good.done and good.result.nfe == 4
