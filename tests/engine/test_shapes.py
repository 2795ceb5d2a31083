"""The shapes dataset, its edits, the pixel-statistics classifier and a micro training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from shapes import BACKGROUNDS, COLOURS, KINDS, edit_benchmark, edit_scene, random_scene, scene_rng, validate
from shapes.classifier import compare, detect, edit_success, edited_object
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


def test_an_added_shape_may_appear_anywhere_free_but_not_in_place_of_a_kept_one():
    from dataclasses import replace

    e = next(e for e in edit_benchmark(40, seed=5) if e.kind == "add")
    _, new = e.edited_shapes
    (kept,) = e.kept_shapes
    elsewhere = replace(new, center=(1 - new.center[0], 1 - new.center[1]))  # captions give no position
    assert all(math.dist(elsewhere.center, k.center) > extent(k.size) + extent(new.size) for k in e.kept_shapes)
    assert math.dist(elsewhere.center, new.center) > 0.3
    assert edit_success(e.source.with_shapes([kept, elsewhere]).render(32), e)
    assert edit_success(e.target.render(32), e)
    assert not edit_success(e.source.render(32), e)
    recoloured = replace(kept, colour=new.colour, kind=new.kind)  # the kept shape turned into the new one
    assert not edit_success(e.source.with_shapes([recoloured]).render(32), e)


def test_the_edited_object_is_found_whatever_its_size():
    """A colour or kind edit may draw its object at another size (captions carry none): ``edited_object`` finds it
    where the edited shape is, so the benchmark counts its pixels as the edit's, not as background."""
    from dataclasses import replace

    e = next(e for e in edit_benchmark(40, seed=5) if e.kind == "kind")
    before, after = e.edited_shapes
    larger = replace(after, size=after.size * 1.3)
    image = e.source.with_shapes([larger if s is before else s for s in e.source.shapes]).render(32)
    found = edited_object(image, e)
    assert found is not None and found.kind == after.kind and found.colour == after.colour
    assert (found.mask > 0).sum() > (Scene((after,)).masks(32)[0] > 0).sum()  # the drawn object, not the truth's
    assert edited_object(e.source.render(32), e).kind == before.kind  # unedited: the shape that is there
    removal = next(e for e in edit_benchmark(40, seed=5) if e.kind == "remove")
    assert edited_object(removal.target.render(32), removal) is None


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

    tuned = tmp_path / "tuned"  # a fine-tune of the saved model for v-prediction with trailing spacing
    common = ["--steps", "2", "--batch", "4", "--device", "cpu", "--threads", "1", "--check-samples", "0"]
    main(
        ["--out", str(tuned), "--init", str(out), "--prediction-type", "v_prediction", "--spacing", "trailing", *common]
    )
    scheduler = DDIMScheduler.from_pretrained(tuned, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert UNet2DConditionModel.load_config(tuned, subfolder="unet")["block_out_channels"] == list(
        unet.config.block_out_channels
    )
    part = "unet/diffusion_pytorch_model.safetensors"
    assert (tuned / part).read_bytes() != (out / part).read_bytes()


def test_short_captions_drop_the_background_phrase_only():
    pytest.importorskip("torch")
    from shapes.train import SceneBatches, short_caption

    plain = SceneBatches(0, 32, 32, 0.0, 77, 4)
    mixed = SceneBatches(0, 32, 32, 0.0, 77, 4, short=0.5)
    scenes, captions = plain.scenes(1)
    same, mixed_captions = mixed.scenes(1)
    assert same == scenes and captions == [s.caption for s in scenes]  # the images do not depend on the mix
    assert all(c in (s.caption, short_caption(s)) for s, c in zip(scenes, mixed_captions, strict=True))
    assert 0 < sum("background" not in c for c in mixed_captions) < len(scenes)
    assert short_caption(Scene((Shape("circle", "red", (0.5, 0.5), 0.15),), "white")) == "a red circle"


SHAPES_MODEL = Path(__file__).parents[2] / "bdia" / "assets" / "shapes"
SAMPLE_QUALITY = Path(__file__).parents[2] / "benchmarks" / "sample_quality.py"


def test_the_bundled_model_samples_from_the_top_level_it_handles():
    """Its scheduler is the training schedule cut after ``SAMPLE_TOP``: every step count starts there (the
    first bundled scheduler started at 1000 − 1000/N, 981 at 50 steps, where samples turned to noise)."""
    torch = pytest.importorskip("torch")
    from diffusers import DDIMScheduler

    from shapes.train import SAMPLE_TOP, scheduler_config

    bundled = DDIMScheduler.from_pretrained(SHAPES_MODEL, subfolder="scheduler")
    training = DDIMScheduler(**scheduler_config())
    assert torch.equal(bundled.alphas_cumprod, training.alphas_cumprod[: SAMPLE_TOP + 1])  # as trained, bit for bit
    assert bundled.final_alpha_cumprod == training.final_alpha_cumprod
    for steps in (10, 20, 50, 100):
        bundled.set_timesteps(steps)
        assert int(bundled.timesteps.max()) == SAMPLE_TOP and len(set(bundled.timesteps.tolist())) == steps


def test_the_bundled_defaults_draw_their_prompts():
    """At the model folder's sampling defaults the classifier finds every prompt's objects in (nearly) every
    sample, captions and prompts naming the shapes only; the old CLI defaults (50 steps, guidance 7.5, γ = 1)
    drew almost none."""
    pytest.importorskip("torch")
    import importlib.util
    import sys

    import bdia
    from bdia.params import DEFAULTS_FILE, ModelDefaults

    model = bdia.load_model("shapes", device="cpu")
    defaults = ModelDefaults.read(SHAPES_MODEL / DEFAULTS_FILE, model.num_train_timesteps)
    spec = importlib.util.spec_from_file_location("sample_quality", SAMPLE_QUALITY)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
        scenes = bench.prompt_scenes(8)
        prompts = [s.caption if i % 2 else bench.short_caption(s) for i, s in enumerate(scenes)]
        sample = defaults.sample
        images = bench.sample_images(model, prompts, range(8), sample.steps, sample.guidance_scale, sample.gamma)
        verdicts = [
            bench.judge(img, s, "caption" if i % 2 else "short")
            for i, (img, s) in enumerate(zip(images, scenes, strict=True))
        ]
    finally:
        del sys.modules[spec.name]
    assert sum(v["ok"] for v in verdicts) >= 7, verdicts
