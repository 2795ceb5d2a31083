"""The shapes dataset, its edits, the pixel-statistics classifier and a micro training run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shapes import BACKGROUNDS, COLOURS, KINDS, edit_benchmark, edit_scene, random_scene, scene_rng, validate
from shapes.classifier import compare, detect, edit_success
from shapes.scenes import GAP, MARGIN, Scene, Shape, extent, render_batch


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    return [random_scene(scene_rng(seed, i)) for i in range(n)]


def test_scenes_are_deterministic_from_the_seed():
    a, b, c = _scenes(20, seed=3), _scenes(20, seed=3), _scenes(20, seed=4)
    assert a == b
    assert a != c
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.render(32), y.render(32))


def test_scenes_are_valid_and_render_at_any_resolution():
    for scene in _scenes(200):
        assert 1 <= len(scene.shapes) <= 2 and scene.background in BACKGROUNDS
        assert [s.center for s in scene.shapes] == sorted(s.center for s in scene.shapes)
        for s in scene.shapes:
            assert s.kind in KINDS and s.colour in COLOURS
            assert all(MARGIN + extent(s.size) <= c <= 1 - MARGIN - extent(s.size) for c in s.center)
        if len(scene.shapes) == 2:
            p, q = scene.shapes
            assert math.dist(p.center, q.center) >= extent(p.size) + extent(q.size) + GAP
    scene = _scenes(1)[0]
    for res in (32, 64):
        image, masks = scene.render(res), scene.masks(res)
        assert image.shape == (res, res, 3) and image.dtype == np.uint8
        assert masks.shape == (len(scene.shapes), res, res) and masks.min() >= 0 and masks.max() <= 1
        assert (masks.sum(0) <= 1 + 1e-6).all()  # shapes never overlap


def test_batch_rendering_is_pixel_identical_to_single_renders():
    scenes = _scenes(70, seed=5)
    assert any(any(s.texture) for s in scenes) and not all(any(s.texture) for s in scenes)
    for res in (32, 64):
        batch = render_batch(scenes, res)
        assert batch.shape == (70, res, res, 3)
        assert all(np.array_equal(batch[i], s.render(res)) for i, s in enumerate(scenes))


def test_captions_match_the_scene():
    for scene in _scenes(100):
        caption = scene.caption
        assert caption.endswith(f" on a {scene.background} background")
        objects = caption.removesuffix(f" on a {scene.background} background").split(" and ")
        assert len(objects) == len(scene.shapes)
        for phrase, shape in zip(objects, scene.shapes, strict=True):
            article = "an" if shape.colour[0] in "aeiou" else "a"
            assert phrase == f"{article} {shape.colour} {shape.kind}"
    star = Shape("star", "orange", (0.5, 0.5), 0.15)
    assert Scene((star,), "beige").caption == "an orange star on a beige background"


def test_edits_change_exactly_one_attribute():
    edits = edit_benchmark(120, seed=1)
    assert {e.kind for e in edits} == {"colour", "kind", "add", "remove"}
    assert edits == edit_benchmark(120, seed=1)
    for e in edits:
        src, dst = e.source, e.target
        assert src.background == dst.background and src.texture == dst.texture
        assert e.prompt == dst.caption != e.source_prompt
        before, after = e.edited_shapes
        assert set(e.kept_shapes) <= set(dst.shapes)  # the others keep their exact positions
        if e.kind == "add":
            assert before is None and len(dst.shapes) == len(src.shapes) + 1
        elif e.kind == "remove":
            assert after is None and len(dst.shapes) == len(src.shapes) - 1
        else:
            assert len(dst.shapes) == len(src.shapes)
            assert before.center == after.center and before.size == after.size
            changed = [before.colour != after.colour, before.kind != after.kind]
            assert changed == ([True, False] if e.kind == "colour" else [False, True])
        region = e.region(32)
        untouched = ~region
        assert np.array_equal(src.render(32)[untouched], dst.render(32)[untouched])
        assert region.any()


def test_edit_kinds_that_do_not_apply():
    rng = np.random.default_rng(0)
    one, two = random_scene(rng, 1), random_scene(rng, 2)
    assert edit_scene(one, rng, "remove") is None
    assert edit_scene(two, rng, "add") is None
    with pytest.raises(ValueError):
        edit_scene(one, rng, "resize")


def test_classifier_is_accurate_on_ground_truth():
    report = validate(500, seed=0)
    assert report["scenes"] == 500
    assert report["object_accuracy"] >= 0.95
    assert report["scene_accuracy"] >= 0.95
    assert report["background_accuracy"] >= 0.95


def test_classifier_reads_edits_and_rejects_wrong_scenes():
    for e in edit_benchmark(8, seed=2):
        target = e.target.render(32)
        assert compare(target, e.target)["ok"]
        assert not compare(target, e.source)["ok"]
    for e in edit_benchmark(60, seed=3):
        assert edit_success(e.target.render(32), e)
        assert not edit_success(e.source.render(32), e)
    blank = Scene((), "white").render(32)
    assert detect(blank).objects == () and detect(blank).background == "white"


def test_micro_training_run_writes_a_diffusers_folder(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from shapes.train import main

    out = tmp_path / "model"
    record = main(
        [
            "--out",
            str(out),
            "--model",
            "micro",
            "--steps",
            "3",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--check-samples",
            "2",
            "--check-steps",
            "2",
            "--log-every",
            "1",
        ]
    )
    assert record["steps_done"] == 3 and len(record["losses"]) == 3
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == [None, None]
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(out, subfolder="text_encoder", dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert unet.config.in_channels == 3 and unet.config.sample_size == 32
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.steps_offset == 1
    ids = tokenizer(["a red circle on a grey background"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        context = text_encoder(ids)[0]
        eps = unet(torch.zeros(1, 3, 32, 32), 500, encoder_hidden_states=context).sample
    assert eps.shape == (1, 3, 32, 32) and torch.isfinite(eps).all()
    assert (out / "samples.png").is_file() and "self_check" in json.loads((out / "training.json").read_text())

    again = tmp_path / "again"  # reproducible from the seed (on CPU with the same thread count)
    main(
        [
            "--out",
            str(again),
            "--model",
            "micro",
            "--steps",
            "3",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--check-samples",
            "0",
        ]
    )
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (out / part).read_bytes() == (again / part).read_bytes()
