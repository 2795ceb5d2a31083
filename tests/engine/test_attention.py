"""Prompt-to-Prompt attention control: injection, capture, and untouched numerics outside controlled calls."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from bdia.attention import AttentionControl, ControlledProcessor, Group, controlled


def make_control(
    cross: float = 1.0, self_fraction: float = 0.0, latent_size: tuple[int, int] = (8, 8), **kw
) -> AttentionControl:
    return AttentionControl(
        mapper=torch.eye(6),
        alphas=torch.ones(6),
        steps=10,
        latent_size=latent_size,
        cross=cross,
        self_fraction=self_fraction,
        **kw,
    )


@pytest.fixture(scope="module")
def attn():
    torch.manual_seed(0)
    module = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    return module.eval()


def probs_of(attn, x, ctx):
    q = attn.head_to_batch_dim(attn.to_q(x))
    k = attn.head_to_batch_dim(attn.to_k(ctx))
    return attn.get_attention_scores(q, k)  # [rows·heads, Q, L]


def test_cross_injection_gives_the_target_the_source_attention(attn):
    torch.manual_seed(1)
    x, ctx = torch.randn(3, 16, 16), torch.randn(3, 6, 12)  # rows: target uncond, target cond, source
    control = make_control(cross=1.0, source_tokens=[2], target_tokens=[3], latent_size=(16, 16))
    with torch.no_grad():
        out = ControlledProcessor([Group(control, 0, 1, 2)])(attn, x, ctx)
        plain = AttnProcessor2_0()(attn, x, ctx)
        p = probs_of(attn, x, ctx).view(3, 2, 16, 6)
        v = attn.head_to_batch_dim(attn.to_v(ctx)).view(3, 2, 6, 8)
        injected = (p[2] @ v[1]).permute(1, 0, 2).reshape(1, 16, 16)
        expected = attn.to_out[0](injected)
    # The target's conditional row attends with the source's probabilities over its own values.
    assert torch.allclose(out[1:2], expected, atol=1e-5)
    assert not torch.allclose(out[1:2], plain[1:2], atol=1e-3)
    # The other rows compute what the model's processor computes.
    assert torch.allclose(out[0], plain[0], atol=1e-5) and torch.allclose(out[2], plain[2], atol=1e-5)
    # Capture: 16 queries of a 16×16 latent are a 4×4 layer (a quarter of the latent's side): recorded.
    assert control.counts == {(4, 4): 1}


def test_no_injection_after_the_fraction_and_reweighting(attn):
    torch.manual_seed(2)
    x, ctx = torch.randn(3, 16, 16), torch.randn(3, 6, 12)
    control = make_control(cross=0.5)
    control.step = 5  # past the first half of 10 steps
    with torch.no_grad():
        out = ControlledProcessor([Group(control, 0, 1, 2)])(attn, x, ctx)
        plain = AttnProcessor2_0()(attn, x, ctx)
        assert torch.allclose(out, plain, atol=1e-5)
        control.reweight = {3: 4.0}
        boosted = ControlledProcessor([Group(control, 0, 1, 2)])(attn, x, ctx)
    assert not torch.allclose(boosted[1], plain[1], atol=1e-4) and torch.allclose(boosted[2], plain[2], atol=1e-5)


def test_self_injection_copies_the_source_self_attention(attn):
    torch.manual_seed(3)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(3, 16, 16)
    control = make_control(cross=0.0, self_fraction=1.0, self_max_tokens=16)
    with torch.no_grad():
        out = ControlledProcessor([Group(control, 0, 1, 2)])(self_attn, x)
        p = probs_of(self_attn, x, x).view(3, 2, 16, 16)
        v = self_attn.head_to_batch_dim(self_attn.to_v(x)).view(3, 2, 16, 8)
        expected = self_attn.to_out[0]((p[2] @ v[1]).permute(1, 0, 2).reshape(1, 16, 16))
    assert torch.allclose(out[1:2], expected, atol=1e-5)


def test_capture_averages_maps_at_the_chosen_resolutions(attn):
    torch.manual_seed(4)
    x, ctx = torch.randn(3, 16, 16), torch.randn(3, 6, 12)  # 16 queries: a 4×4 layer
    control = make_control(cross=0.0, source_tokens=[1, 2], target_tokens=[4], latent_size=(8, 8))
    control.keep_groups = [[3], [5]]
    with torch.no_grad():
        ControlledProcessor([Group(control, 0, 1, 2)])(attn, x, ctx)
        ControlledProcessor([Group(control, 0, 1, 2)])(attn, x, ctx)
        p = probs_of(attn, x, ctx).view(3, 2, 16, 6)
    expected = p[2][..., [1, 2]].sum(-1).mean(0) + p[1][..., [4]].sum(-1).mean(0)
    assert control.counts == {(4, 4): 2}
    assert torch.allclose(control.maps[(4, 4)] / 2, expected.reshape(4, 4), atol=1e-6)
    m = control.attention_map()
    assert m.shape == (1, 1, 8, 8) and float(m.max()) == pytest.approx(1.0) and float(m.min()) == 0.0
    assert torch.allclose(control.kept[(1, (4, 4))] / 2, p[2][..., 5].mean(0).reshape(4, 4), atol=1e-6)
    assert [k.shape for k in control.kept_maps()] == [(1, 1, 8, 8)] * 2
    control.clear()
    assert control.attention_map() is None and control.kept_maps() == []


def test_uncontrolled_calls_stay_bit_identical_and_processors_come_back(tiny_model):
    unet = tiny_model.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    z = torch.randn(3, *tiny_model.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = tiny_model.encode_prompt(["a red circle", "a blue circle", "a red circle"])
    reference = tiny_model.predict(z, 500, emb)
    length = emb.shape[1]
    control = AttentionControl(torch.eye(length), torch.ones(length), steps=4, latent_size=tuple(z.shape[-2:]))
    with controlled(unet, [Group(control, 0, 1, 2)]):
        steered = tiny_model.predict(z, 500, emb)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert torch.equal(tiny_model.predict(z, 500, emb), reference)
    assert not torch.equal(steered[1], reference[1])  # the target row took the source's attention
