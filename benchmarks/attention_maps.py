"""Where the cross-attention of an edit's words falls, per layer resolution and step (docs/editing.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attention_maps.py [--n 50] [--model shapes]

Runs Shapes-Edit edits (colour, kind, remove, background) as the engine runs them (an exact inversion
at the model's defaults, then the controlled edit with the source row beside the target) and reads the
cross-attention probabilities of every controlled call. For each edit, layer resolution and step it
makes two maps, averaged over heads: the changed words' phrase nouns ("circle" in "a red circle" → "a
green circle"; "background" for a background edit) and the changed words that are not nouns ("red"),
both from the source row. A map is scored by its IoU with the edit's ground-truth region when
thresholded at that region's area (the map's top-k pixels, k = the region's pixel count), which
measures where it points without choosing a threshold. Add edits are left out: the added shape's place
is the model's choice.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level shapes folder

import numpy as np
import torch
import torch.nn.functional as F

import bdia
from bdia import attention, imaging
from bdia.batching import Layout, drive_together
from bdia.ops import inverting, regenerating
from bdia.params import EditParams, InversionParams
from bdia.prompts import align, phrase_noun, tokens_of
from shapes import edit_benchmark

KINDS = ("colour", "kind", "remove", "background")


@contextlib.contextmanager
def traced(log: dict[int, list]) -> Iterator[None]:
    """Within the block every controlled call records each layer's source probabilities per control."""
    record, capturing = attention.AttentionControl.record, attention.AttentionControl.capturing

    def spy(self, size, source, target):
        log.setdefault(id(self), []).append((self.step, size, source.detach().float().mean(0)))
        return record(self, size, source, target)

    attention.AttentionControl.record = spy
    attention.AttentionControl.capturing = lambda self, size: True  # every layer, not only the mask's
    try:
        yield
    finally:
        attention.AttentionControl.record, attention.AttentionControl.capturing = record, capturing


def iou_at_area(m: torch.Tensor, truth: np.ndarray) -> float:
    """IoU of ``m`` (h, w) upsampled to ``truth``'s size and cut at ``truth``'s area, with ``truth``."""
    up = F.interpolate(m[None, None], size=truth.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    k = int(truth.sum())
    found = up >= np.sort(up.ravel())[::-1][k - 1]
    return float((found & truth).sum() / (found | truth).sum())


def run(n: int, model_name: str, steps: int | None = None) -> dict:
    model = bdia.load_model(model_name)
    bdia.configure_determinism(model)
    res = model.height
    edits = edit_benchmark(n, 0, kinds=KINDS)
    defaults = model.defaults.inversion(steps=steps)
    jobs, words = [], []
    for b, e in enumerate(edits):
        params = InversionParams(
            model=model.name,
            prompt=e.source_prompt,
            **{k: defaults[k] for k in ("steps", "strength", "guidance_scale")},
            method="bdia",
            exact=True,
        ).check()
        z0 = imaging.to_tensor(imaging.load_image(e.source.image(res))).double()
        jobs.append(inverting(model, z0, params, keep_trajectory=True, layout=Layout(len(edits), b)))
        a = align(model.tokenizer, e.source_prompt, e.prompt)
        nouns = sorted({j for i in a.source_changed if (j := phrase_noun(a.source_words, i)) is not None})
        others = [i for i in a.source_changed if i not in nouns and phrase_noun(a.source_words, i) in nouns]
        words.append((tokens_of(a.source_spans, nouns), tokens_of(a.source_spans, others)))
    inversions = drive_together(model, jobs)
    log: dict[int, list] = {}
    edit = EditParams(control="none", mask_mode="attention", restart_removed=False)  # the model's own maps
    with traced(log):
        drive_together(
            model, [regenerating(model, inv, e.prompt, edit=edit) for inv, e in zip(inversions, edits, strict=True)]
        )
    controls = list(log)  # one control per job, first seen in the jobs' order (the first call runs them all)
    scores: dict[tuple[str, str, int, int], list[float]] = {}
    for key, e, (nouns, others) in zip(controls, edits, words, strict=True):
        truth = e.region(res, 0)
        for step, size, probs in log[key]:
            for group, tokens in (("noun", nouns), ("other words", others)):
                if tokens:
                    m = probs[:, tokens].sum(-1).reshape(size)
                    scores.setdefault((e.kind, group, size[0], step), []).append(iou_at_area(m, truth))
    return {"edits": len(edits), "steps": defaults["steps"], "scores": scores}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="edits (a quarter per kind)")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--steps", type=int, default=None, help="inversion steps (default: the model's)")
    args = parser.parse_args(argv)
    out = run(args.n, args.model, args.steps)
    scores = out["scores"]
    steps = sorted({k[3] for k in scores})
    picks = [s for s in (0, len(steps) // 4, len(steps) // 2, 3 * len(steps) // 4, len(steps) - 1) if s < len(steps)]
    picks = sorted(set(picks))
    print(f"{out['edits']} edits; IoU at the region's area of the source row's maps, by step of the edit")
    print("| edit | words | layer | " + " | ".join(f"step {steps[p]}" for p in picks) + " | mean |")
    print("|---|---|---|" + "---|" * (len(picks) + 1))
    for kind in KINDS:
        for group in ("noun", "other words"):
            for size in sorted({k[2] for k in scores if k[0] == kind and k[1] == group}, reverse=True):
                row = [np.mean(scores[(kind, group, size, steps[p])]) for p in picks]
                every = np.mean([v for s in steps for v in scores.get((kind, group, size, s), [])])
                cells = " | ".join("–" if math.isnan(v) else f"{v:.2f}" for v in row)
                print(f"| {kind} | {group} | {size}×{size} | {cells} | {every:.2f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
