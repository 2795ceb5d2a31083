"""Controlled edits (bdia.editing): exact background, reported mask, batch invariance, reconstructions
untouched, and one-line errors for bad control parameters (engine and CLI)."""

from __future__ import annotations

import pytest
import torch

import bdia
from bdia.batching import Lane, Layout, advance, drive
from bdia.cli import main
from bdia.ops import invert_latent, regenerate, regenerating
from bdia.params import EditParams, InversionParams

SOURCE, TARGET = "a red circle on a grey background", "a blue circle on a grey background"


@pytest.fixture(scope="module")
def z0(tiny_model):
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, *tiny_model.latent_shape, generator=g, dtype=torch.float64) * 2 - 1


def inversion(model, z0, layout=Layout(), prompt=SOURCE, method="bdia"):
    params = InversionParams(
        model=model.name, prompt=prompt, steps=8, guidance_scale=2.0, method=method, exact=method == "bdia"
    )
    return invert_latent(model, z0, params.check(), layout=layout)


def test_controlled_edit_keeps_the_source_outside_its_mask(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    result = regenerate(tiny_model, inv, TARGET)
    assert result.mask is not None and result.mask.dtype == torch.bool
    assert result.mask.shape == (1, 1, *z0.shape[-2:])
    assert 0 < float(result.mask.float().mean()) < 1 and result.mask_fraction is not None
    mask, source = result.mask.expand_as(z0), inv.lattice.decode(inv.z0)
    assert torch.equal(result.z0[~mask], source[~mask])  # bit for bit
    assert not torch.equal(result.z0, source)
    # Blending off: the whole latent may change, and no mask is reported.
    free = regenerate(tiny_model, inv, TARGET, edit=EditParams(mask_mode="none"))
    assert free.mask is None and not torch.equal(free.z0, result.z0)


def test_control_changes_the_edit(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    blended = dict(mask_mode="none")
    cross = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="cross", **blended)).z0
    plain = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="none", **blended)).z0
    both = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="cross+self", self_fraction=1, **blended)).z0
    assert not torch.equal(cross, plain) and not torch.equal(both, cross)


def test_reconstruction_takes_the_plain_path_and_stays_bit_exact(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    for prompt in (None, SOURCE):
        result = regenerate(tiny_model, inv, prompt, edit=EditParams(control="cross+self"))
        assert torch.equal(result.z0, inv.lattice.decode(inv.z0)) and result.mask is None


def test_a_controlled_edit_is_independent_of_its_batchmates(tiny_model, z0):
    layout = Layout(2, 0)
    inv = inversion(tiny_model, z0, layout)
    alone = drive(tiny_model, regenerating(tiny_model, inv, TARGET))
    other_z = torch.flip(z0, dims=[-1])
    for prompt, mate_target in (
        ("a green star on a white background", "a green square on a white background"),
        (SOURCE, "a red star on a grey background"),
    ):
        mate = inversion(tiny_model, other_z, Layout(2, 1), prompt=prompt)
        lanes = [Lane(regenerating(tiny_model, inv, TARGET)), Lane(regenerating(tiny_model, mate, mate_target))]
        while any(lane.live for lane in lanes):
            advance(tiny_model, lanes)
        assert lanes[0].error is None and lanes[1].error is None
        assert lanes[0].evaluations == lanes[1].evaluations  # they shared every call
        assert torch.equal(lanes[0].result.z0, alone.z0) and torch.equal(lanes[0].result.mask, alone.mask)


def test_ddim_inversions_get_prompt_to_prompt_with_a_regenerated_source(tiny_model, z0):
    inv = inversion(tiny_model, z0, method="ddim")
    result = regenerate(tiny_model, inv, TARGET)
    assert result.mask is not None and torch.isfinite(result.z0).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(cross_fraction=1.5), "cross_fraction: Input should be less than or equal to 1"),
        (dict(self_fraction=-0.1), "self_fraction: Input should be greater than or equal to 0"),
        (dict(control="all"), "control: Input should be 'none', 'cross' or 'cross+self'"),
        (dict(reweight={"blue": 20.0}), "the factor of 'blue' must be in [0, 10]"),
    ],
)
def test_bad_control_parameters_are_one_line_errors(fields, message):
    with pytest.raises(bdia.InvalidParameter) as info:
        EditParams.create(**fields)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_blend_word_absent_from_both_prompts_is_refused(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    with pytest.raises(bdia.InvalidParameter, match="the word 'star' is not in the source or the edit prompt"):
        regenerate(tiny_model, inv, TARGET, edit=EditParams(blend_words=["star"]))
    with pytest.raises(bdia.InvalidParameter, match="the word 'red' is not in the edit prompt"):
        regenerate(tiny_model, inv, TARGET, edit=EditParams(reweight={"red": 2}))


def test_cli_edit_uses_the_controlled_default_and_refuses_bad_flags(tmp_path, z0, tiny_model, capsys):
    inv = inversion(tiny_model, z0)
    path = tmp_path / "inv.safetensors"
    path.write_bytes(inv.to_bytes())
    out = tmp_path / "out.png"
    common = ["edit", str(path), "--device", "cpu", "--no-progress", "--prompt", TARGET, "--output", str(out)]
    assert main(common) == 0 and out.exists()
    capsys.readouterr()
    assert main([*common, "--cross-fraction", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cross_fraction" in err
    assert main([*common, "--blend", "star"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'star'" in err
