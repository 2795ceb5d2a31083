"""Controlled edits (bdia.editing): exact background, reported mask, batch invariance, reconstructions
untouched, and one-line errors for bad control parameters (engine and CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bdia
from bdia import editing, imaging
from bdia.batching import Lane, Layout, advance, drive
from bdia.cli import main
from bdia.editing import Blender, Removal, attention_mask, dilate, fresh_state, localised, otsu_threshold
from bdia.grid import LevelGrid
from bdia.ops import invert_latent, regenerate, regenerating
from bdia.params import EditParams, InversionParams
from bdia.prompts import align

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


NOISE_MASK = EditParams(mask_mode="noise")  # the random tiny model's attention does not localise


def test_controlled_edit_keeps_the_source_outside_its_mask(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    result = regenerate(tiny_model, inv, TARGET, edit=NOISE_MASK)
    assert result.mask is not None and result.mask.dtype == torch.bool
    assert result.mask.shape == (1, 1, *z0.shape[-2:])
    assert 0 < float(result.mask.float().mean()) < 1 and result.mask_fraction is not None
    mask, source = result.mask.expand_as(z0), inv.lattice.decode(inv.z0)
    assert torch.equal(result.z0[~mask], source[~mask])  # bit for bit
    assert not torch.equal(result.z0, source)
    # Blending off: the whole latent may change, and no mask is reported.
    free = regenerate(tiny_model, inv, TARGET, edit=EditParams(mask_mode="none"))
    assert free.mask is None and not torch.equal(free.z0, result.z0)


def test_pixels_the_edit_barely_changed_keep_the_source(tiny_model, z0):
    """Inside the latent mask, pixels within ``unchanged_tolerance`` of the source are the source's own, and the
    reported mask shrinks to the pixels that changed (``imaging.changed_within``); outside it: the source."""
    inv = inversion(tiny_model, z0)
    source = np.asarray(imaging.decode(tiny_model, inv.lattice.decode(inv.z0)), np.int16)
    whole = regenerate(tiny_model, inv, TARGET, edit=NOISE_MASK.model_copy(update={"unchanged_tolerance": 0}))
    edited, full = np.asarray(whole.image, np.int16), np.asarray(whole.mask_image) > 0
    moved = np.abs(edited - source).max(-1)
    tol = int(np.percentile(moved[full], 50))
    settled = regenerate(tiny_model, inv, TARGET, edit=NOISE_MASK.model_copy(update={"unchanged_tolerance": tol}))
    assert torch.equal(settled.z0, whole.z0) and torch.equal(settled.mask, whole.mask)  # the same edit
    image, mask = np.asarray(settled.image, np.int16), np.asarray(settled.mask_image) > 0
    assert (mask <= full).all() and 0 < mask.sum() < full.sum() and settled.mask_fraction < whole.mask_fraction
    assert (image[~mask] == source[~mask]).all()  # outside the reported mask: the source's own pixels
    assert (image[mask] == edited[mask]).all()  # inside it: the edit's
    changed = (moved > tol) & full
    assert mask[changed].mean() > 0.9  # what moved stays changed, but for isolated specks


def test_a_global_edit_keeps_the_pixels_it_did_not_change(tiny_model, z0):
    """The random model's attention covers the whole image: the automatic mask makes the edit global (no latent
    mask), and the pixels it moved by at most the tolerance are still the source's own."""
    inv = inversion(tiny_model, z0)
    source = np.asarray(imaging.decode(tiny_model, inv.lattice.decode(inv.z0)), np.int16)
    raw = regenerate(tiny_model, inv, TARGET, edit=EditParams(unchanged_tolerance=0))
    assert raw.mask is None and raw.mask_image is None  # global, and nothing settled
    moved = np.abs(np.asarray(raw.image, np.int16) - source).max(-1)
    tol = int(np.percentile(moved, 50))
    settled = regenerate(tiny_model, inv, TARGET, edit=EditParams(unchanged_tolerance=tol))
    assert settled.mask is None and torch.equal(settled.z0, raw.z0)
    image, changed = np.asarray(settled.image, np.int16), np.asarray(settled.mask_image) > 0
    assert 0 < changed.mean() < 1 and settled.mask_fraction == pytest.approx(changed.mean())
    assert (image[~changed] == source[~changed]).all() and (image[changed] == np.asarray(raw.image)[changed]).all()


def test_control_changes_the_edit(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    blended = dict(mask_mode="none")
    cross = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="cross", **blended)).z0
    plain = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="none", **blended)).z0
    both = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="cross+self", self_fraction=1, **blended)).z0
    swap = regenerate(tiny_model, inv, TARGET, edit=EditParams(control="swap", **blended)).z0
    assert not torch.equal(cross, plain) and not torch.equal(both, cross)
    assert not torch.equal(swap, plain) and not torch.equal(swap, cross)  # only the swapped word is injected


def test_swap_injects_the_swapped_words_and_the_kept_nouns(tiny_model, z0, monkeypatch):
    made = []  # the edit's attention control (a spy on the real class)
    real = editing.AttentionControl
    monkeypatch.setattr(editing, "AttentionControl", lambda **fields: made.append(real(**fields)) or made[-1])
    inv = inversion(tiny_model, z0, prompt="a red circle and a blue square on a grey background")
    target = "a red circle and a green square on a grey background"
    regenerate(tiny_model, inv, target, edit=EditParams(control="swap", mask_mode="none"))
    alignment = align(tiny_model.tokenizer, inv.params.prompt, target)
    words = list(zip(alignment.target_words, alignment.target_spans, strict=True))
    injected = [w for w, span in words if made[0].alphas[span].all()]
    assert injected == ["circle", "green", "background"]  # the swapped word and the kept phrases' nouns
    assert not any(made[0].alphas[span].any() for w, span in words if w not in injected)


def test_reconstruction_takes_the_plain_path_and_stays_bit_exact(tiny_model, z0):
    inv = inversion(tiny_model, z0)
    for prompt in (None, SOURCE):
        result = regenerate(tiny_model, inv, prompt, edit=EditParams(control="cross+self"))
        assert torch.equal(result.z0, inv.lattice.decode(inv.z0)) and result.mask is None


def test_a_controlled_edit_is_independent_of_its_batchmates(tiny_model, z0):
    layout = Layout(2, 0)
    inv = inversion(tiny_model, z0, layout)
    alone = drive(tiny_model, regenerating(tiny_model, inv, TARGET, edit=NOISE_MASK))
    other_z = torch.flip(z0, dims=[-1])
    for prompt, mate_target in (
        ("a green star on a white background", "a green square on a white background"),
        (SOURCE, "a red star on a grey background"),
    ):
        mate = inversion(tiny_model, other_z, Layout(2, 1), prompt=prompt)
        lanes = [
            Lane(regenerating(tiny_model, inv, TARGET, edit=NOISE_MASK)),
            Lane(regenerating(tiny_model, mate, mate_target)),
        ]
        while any(lane.live for lane in lanes):
            advance(tiny_model, lanes)
        assert lanes[0].error is None and lanes[1].error is None
        assert lanes[0].evaluations == lanes[1].evaluations  # they shared every call
        assert alone.mask is not None
        assert torch.equal(lanes[0].result.z0, alone.z0) and torch.equal(lanes[0].result.mask, alone.mask)


def test_a_deleted_phrase_restarts_from_noise_after_one_probe_call(tiny_model, z0, monkeypatch):
    regions = []  # what each probe found (a spy on the real method)
    probe = Removal.probe
    monkeypatch.setattr(Removal, "probe", lambda self, control: regions.append(probe(self, control)) or regions[-1])
    two = "a red circle and a blue square on a grey background"
    layout = Layout(2, 0)
    inv = inversion(tiny_model, z0, layout, prompt=two)
    small = EditParams(mask_mode="attention", mask_threshold=0.9)  # a small region from the random model's maps
    swap = regenerate(tiny_model, inv, "a red circle and a blue star on a grey background", edit=small)
    removal = drive(tiny_model, regenerating(tiny_model, inv, SOURCE, edit=small))
    assert removal.nfe == swap.nfe + 1  # the probe
    assert len(regions) == 1 and regions[0] is not None and 0 < float(regions[0].float().mean()) <= 0.5
    mask, source = removal.mask.expand_as(z0), inv.lattice.decode(inv.z0)
    assert torch.equal(removal.z0[~mask], source[~mask])
    mate = inversion(tiny_model, torch.flip(z0, dims=[-1]), Layout(2, 1))
    lanes = [Lane(regenerating(tiny_model, inv, SOURCE, edit=small)), Lane(regenerating(tiny_model, mate, TARGET))]
    while any(lane.live for lane in lanes):
        advance(tiny_model, lanes)
    assert torch.equal(lanes[0].result.z0, removal.z0)  # the probe and the restart are the job's own


def test_fresh_states_follow_the_ddim_marginal():
    grid = LevelGrid(timesteps=(None, 500, 999), alphas_cumprod=(1.0, 0.25, 0.01))
    prior, noise = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64), torch.ones(1, 1, 2, 2, dtype=torch.float64)
    assert torch.allclose(fresh_state(grid, 1, prior, noise), torch.full_like(prior, 0.5 * 0.5 + 0.75**0.5))


class FixedMap:
    """An attention control stand-in whose captured maps are given."""

    def __init__(self, m: torch.Tensor, kept: list[torch.Tensor] | None = None, added: bool = False) -> None:
        self.m, self.kept = m, kept or []
        self.target_tokens = [5] if added else []  # blend words read from the target row: the edit adds an object

    def attention_map(self) -> torch.Tensor:
        return self.m

    def kept_maps(self) -> list[torch.Tensor]:
        return self.kept


def test_the_mask_leaves_out_what_a_kept_phrase_holds():
    edited = torch.zeros(1, 1, 16, 16)
    edited[..., 2:10, 2:10] = 1.0
    kept = torch.zeros(1, 1, 16, 16)
    kept[..., 6:10, 6:14] = 1.0  # an unchanged object overlapping the edited one's attention
    blender = Blender(FixedMap(edited, [kept]), "auto", None, lambda level: None)
    assert torch.equal(blender.current(), dilate(edited > 0.5) & ~(kept > edited))
    background = 1 - edited  # a global edit (the background): not blended (coarse maps would leave halos)
    blender = Blender(FixedMap(background, [kept]), "auto", None, lambda level: None)
    assert blender.current() is None and blender.source == "global"
    # Global is decided before the kept objects are cut out: a background around a large kept object stays global.
    background[..., 10:16, :] = 0.7
    large = torch.zeros(1, 1, 16, 16)
    large[..., 10:16, :] = 1.0
    assert not localised(attention_mask(background, None)) and localised(
        attention_mask(background, None) & ~(large > background)
    )
    blender = Blender(FixedMap(background, [large]), "auto", None, lambda level: None)
    assert blender.current() is None and blender.source == "global"


def test_an_added_object_is_never_masked_over_a_kept_one():
    kept = torch.zeros(1, 1, 16, 16)
    kept[..., 4:10, 4:10] = 1.0
    new = 0.1 * torch.ones(1, 1, 16, 16)
    new[..., 4:10, 4:10] = 1.0  # the new noun attends most to the object already there …
    new[..., 11:15, 0:4] = 0.6  # … and next most to a free corner
    per_pixel = Blender(FixedMap(new, [kept]), "auto", None, lambda level: None).current()
    assert per_pixel[..., 4:10, 4:10].any()  # an edit of existing objects: only where the kept map outweighs
    mask = Blender(FixedMap(new, [kept], added=True), "auto", None, lambda level: None).current()
    corner = torch.zeros_like(mask)
    corner[..., 11:15, 0:4] = True
    assert torch.equal(mask, dilate(corner) & ~dilate(kept > 0.5))  # the free corner, the kept object left whole


def test_the_reported_mask_is_the_one_the_last_step_used():
    local = torch.zeros(1, 1, 16, 16)
    local[..., 4:8, 4:8] = 1.0
    maps = FixedMap(local)
    blender = Blender(maps, "auto", None, lambda level: torch.zeros(1, 1, 16, 16))
    state = torch.ones(1, 1, 16, 16)
    assert torch.equal(blender.guide(1, state), dilate(local > 0.5).float()) and blender.mask is not None
    maps.m = 1 - local  # the maps settle on a global edit: not blended, and no mask is reported
    assert torch.equal(blender.guide(0, state), state) and blender.mask is None


def test_otsu_threshold_splits_a_two_level_map():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:8, 4:8] = 0.9
    m += torch.rand(m.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    t = otsu_threshold(m)
    assert 0.1 <= t <= 0.9 and torch.equal(m > t, m > 0.5)


def test_an_attention_map_over_most_of_the_image_makes_the_edit_global():
    local = torch.zeros(1, 1, 16, 16)
    local[..., 4:8, 4:8] = 1.0
    blender = Blender(FixedMap(local), "auto", None, lambda level: None)
    mask = blender.current()
    assert blender.source == "attention" and torch.equal(mask, dilate(local > 0.5))
    blender = Blender(FixedMap(1 - local), "auto", None, lambda level: None)  # e.g. "background"
    assert blender.current() is None and blender.source == "global"
    blender = Blender(FixedMap(1 - local), "attention", None, lambda level: None)  # asked for: kept
    assert blender.current() is not None and blender.source == "attention"


def test_ddim_inversions_get_prompt_to_prompt_with_a_regenerated_source(tiny_model, z0):
    inv = inversion(tiny_model, z0, method="ddim")
    result = regenerate(tiny_model, inv, TARGET, edit=NOISE_MASK)
    assert result.mask is not None and torch.isfinite(result.z0).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(cross_fraction=1.5), "cross_fraction: Input should be less than or equal to 1"),
        (dict(self_fraction=-0.1), "self_fraction: Input should be greater than or equal to 0"),
        (dict(control="all"), "control: Input should be 'none', 'swap', 'cross' or 'cross+self'"),
        (dict(reweight={"blue": 20.0}), "the factor of 'blue' must be in [0, 10]"),
        (dict(unchanged_tolerance=256), "unchanged_tolerance: Input should be less than or equal to 255"),
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
    assert main([*common, "--no-restart-removed", "--no-keep-unchanged", "--mask-threshold", "0.6"]) == 0
    capsys.readouterr()
    assert main([*common, "--cross-fraction", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cross_fraction" in err
    assert main([*common, "--unchanged-tolerance", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unchanged_tolerance" in err
    assert main([*common, "--blend", "star"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'star'" in err
