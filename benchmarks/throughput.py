"""Latency and throughput of the worker's batch layouts against the engine alone. A script:

    .venv/bin/python benchmarks/throughput.py [--model shapes] [--steps 20] [--guidance-scale 2]
        [--concurrency 1,2,4,8] [--workers fixed:1,fixed:4,adaptive] [--threads N] [--json]
    .venv/bin/python benchmarks/throughput.py --invariance [--threads N] [--repeats 5]

For each worker configuration of ``--workers`` (``fixed:B``: every job at batch size B;
``adaptive``: the adaptive policy up to the default widest batch; ``adaptive:B``: up to B; any of them
``@T`` for T torch threads instead of the run's) gets a local stack (``bdia.jobqueue.stack``: the
real API, Redis queue and one worker process; a private redis-server unless ``BDIA_REDIS_URL`` is
set). The stacks run at once, idle but for the one being measured, and take turns, so that a slow
spell of the (shared) machine falls on all of them. After a warm-up edit on each, it times:

- lone edits, one at a time: three edits of new images (invert + edit), each followed by a second
  edit of the same image (the inversion cached). Right before each, this process makes the same
  edit with the engine alone (``bdia.invert`` + ``bdia.regenerate``, same model, settings and torch
  threads as the run): each edit's ratio to the engine is taken against the run next to it;
- K concurrent edits of K new images for each K of ``--concurrency``: K clients submit at once,
  ``--rounds`` times, the workers taking turns (the order reversed each round); the fastest round counts.

Latency is submission → finish as the service records it (``created_at`` → ``finished_at``);
throughput is K over first submission → last finish. Workers run the default torch threads
(``bdia.workers.worker.default_threads``) unless ``--threads`` or ``@T`` says otherwise. With
``--json`` the last line is one JSON object with every measurement.

``--invariance`` instead probes whether a sample's network output keeps its bits whatever else
shares its call (docs/batch-invariance.md): per layer type of the model's UNet and for the whole
network, and what evaluating rows one at a time would cost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdia.app.demo import EDITS, SOURCE_PROMPT
from bdia.client import BdiaClient
from bdia.jobqueue.stack import LocalStack
from bdia.params import default_model


def image(seed: int, size: int = 64) -> bytes:
    """A distinct PNG per seed (so no edit finds another's inversion cached)."""
    picture = Image.new("RGB", (size, size))
    picture.putdata(
        [
            ((x * 3 + seed * 41) % 256, (y * 5 + seed * 13) % 256, (x * y + seed * 7) % 256)
            for y in range(size)
            for x in range(size)
        ]
    )
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _time(stamp: str | datetime) -> float:
    return (stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)).timestamp()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (q in [0, 1])."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Worker(NamedTuple):
    """A worker configuration: ``fixed:B``, ``adaptive`` or ``adaptive:B``, each with an optional ``@threads``."""

    policy: str
    width: int | None = None
    """The widest batch (None: the default)."""
    threads: int | None = None
    """torch threads (None: the run's)."""

    @classmethod
    def parse(cls, spec: str) -> Worker:
        layout, _, threads = spec.partition("@")
        policy, _, width = layout.partition(":")
        if policy not in ("fixed", "adaptive") or (policy == "fixed" and not width):
            raise ValueError(
                f"a worker is fixed:B, adaptive or adaptive:B (each with an optional @threads), got {spec!r}"
            )
        return cls(policy, int(width) if width else None, int(threads) if threads else None)

    @property
    def name(self) -> str:
        return self.policy + (f":{self.width}" if self.width else "") + (f"@{self.threads}" if self.threads else "")


# --- the engine alone -------------------------------------------------------------------------------


class Engine:
    """The same edits in this process with the engine alone: ``bdia.invert`` + ``bdia.regenerate``."""

    def __init__(self, model_name: str, threads: int, params: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = _model(model_name)
        self.params = params
        self.edit(0)  # warm-up

    def edit(self, seed: int) -> tuple[Any, float]:
        """Invert image ``seed`` and edit it with ``EDITS[0]``: the inversion and the seconds."""
        import bdia

        p = self.params
        started = time.perf_counter()
        inversion = bdia.invert(
            self.model,
            image(seed),
            SOURCE_PROMPT,
            steps=p["steps"],
            strength=p["strength"],
            guidance_scale=p["guidance_scale"],
        )
        self.nfe = inversion.nfe + self.regenerate(inversion, EDITS[0])[0]
        return inversion, time.perf_counter() - started

    def regenerate(self, inversion: Any, prompt: str) -> tuple[int, float]:
        """Edit an inversion (a cached edit): its NFE and seconds."""
        import bdia

        started = time.perf_counter()
        edited = bdia.regenerate(self.model, inversion, prompt, guidance_scale=self.params["guidance_scale"])
        _png(edited.image)
        return edited.nfe, time.perf_counter() - started


_MODELS: dict[str, Any] = {}


def _model(name: str) -> Any:
    import bdia

    if name not in _MODELS:
        _MODELS[name] = bdia.load_model(name, device="cpu")
        bdia.configure_determinism(_MODELS[name])
    return _MODELS[name]


def _png(picture: Any) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the service ------------------------------------------------------------------------------------


class Seeds:
    """Fresh image seeds: no two edits of a run share an image unless they mean to."""

    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, n: int = 1) -> list[int]:
        self.next += n
        return list(range(self.next - n, self.next))


def burst(url: str, seeds: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """``len(seeds)`` clients each submit one edit at the same moment; their latencies and the throughput."""

    def one(seed: int) -> Any:
        with BdiaClient(url, timeout=600) as client:
            job = client.edit_image(image(seed), SOURCE_PROMPT, EDITS[seed % len(EDITS)], **params)
            return client.wait(job.id, timeout=1800)

    with ThreadPoolExecutor(len(seeds)) as pool:
        done = list(pool.map(one, seeds))
    return _stats(done)


def lone(url: str, seed: int, params: dict[str, Any], engine: Engine) -> list[tuple[Any, float]]:
    """An edit of a new image alone (invert + edit), then a second edit of it (the inversion cached),
    each right after the engine alone made the same edit: each job with the engine's seconds."""
    with BdiaClient(url, timeout=600) as client:
        inversion, fresh_s = engine.edit(seed)
        fresh = client.wait(client.edit_image(image(seed), SOURCE_PROMPT, EDITS[0], **params).id, timeout=600)
        cached_s = engine.regenerate(inversion, EDITS[1])[1]
        cached = client.wait(client.edit_image(image(seed), SOURCE_PROMPT, EDITS[1], **params).id, timeout=600)
    assert cached.metrics.get("inversion_cached"), "the second edit should reuse the inversion"
    return [(fresh, fresh_s), (cached, cached_s)]


def _lone_stats(pairs: list[tuple[Any, float]]) -> dict[str, Any]:
    stats = _stats([job for job, _ in pairs])
    stats["engine_s"] = statistics.median(seconds for _, seconds in pairs)
    stats["ratio"] = statistics.median(s / e for s, (_, e) in zip(stats["latencies"], pairs, strict=True))
    return stats


def _stats(jobs: list[Any]) -> dict[str, Any]:
    if any(job.status != "succeeded" for job in jobs):
        raise RuntimeError(f"jobs failed: {[job.error for job in jobs if job.status != 'succeeded']}")
    created = [_time(job.created_at) for job in jobs]
    finished = [_time(job.finished_at) for job in jobs]
    latencies = [f - c for c, f in zip(created, finished, strict=True)]
    wall = max(finished) - min(created)
    return {
        "latencies": latencies,
        "jobs": len(jobs),
        "jobs_per_s": len(jobs) / wall,
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "median_s": statistics.median(latencies),
        "nfe": jobs[0].metrics.get("nfe"),
    }


def stack_for(model: str, worker: Worker, threads: int, logs: Path) -> LocalStack:
    """A local stack (not started) whose one worker has this configuration."""
    settings: dict[str, Any] = {
        "model": model,
        "models": model,
        "batch_policy": worker.policy,
        "worker_threads": worker.threads or threads,
    }
    if worker.width is not None:
        settings["batch_size"] = worker.width
    return LocalStack(logs / worker.name.replace(":", "").replace("@", "-t"), settings)


def measure(
    model: str,
    workers: list[Worker],
    threads: int,
    concurrency: list[int],
    params: dict[str, Any],
    logs: Path,
    engine: Engine,
    repeats: int,
) -> list[dict[str, Any]]:
    """Every configuration's stack at once (idle ones wait on Redis), measured in turns so that a slow
    spell of the machine falls on all of them: the lone edits, then each K's bursts ``repeats`` times,
    the order reversed each round; a burst reports its fastest round."""
    seeds = Seeds(1)
    with contextlib.ExitStack() as running:
        stacks = [running.enter_context(stack_for(model, worker, threads, logs)) for worker in workers]
        for stack in stacks:  # warm-up
            with BdiaClient(stack.url, timeout=600) as client:
                (seed,) = seeds.take(1)
                client.wait(client.edit_image(image(seed), SOURCE_PROMPT, EDITS[0], **params).id, timeout=600)
        pairs: list[list[tuple[Any, float]]] = [[] for _ in workers]
        for round_ in range(3):
            for i in _turns(len(workers), round_):
                pairs[i] += lone(stacks[i].url, seeds.take(1)[0], params, engine)
        bursts: list[dict[int, dict[str, Any]]] = [{} for _ in workers]
        for k in concurrency:
            for round_ in range(repeats):
                for i in _turns(len(workers), round_):
                    result = burst(stacks[i].url, seeds.take(k), params)
                    rounds = [*bursts[i].get(k, {}).get("rounds", []), result["jobs_per_s"]]
                    if k not in bursts[i] or result["jobs_per_s"] > bursts[i][k]["jobs_per_s"]:
                        bursts[i][k] = result
                    bursts[i][k]["rounds"] = rounds
    return [
        {"worker": w.name, "edit": _lone_stats(p[0::2]), "cached_edit": _lone_stats(p[1::2]), "bursts": b}
        for w, p, b in zip(workers, pairs, bursts, strict=True)
    ]


def _turns(n: int, round_: int) -> list[int]:
    return list(range(n)) if round_ % 2 == 0 else list(range(n - 1, -1, -1))


# --- batch invariance (docs/batch-invariance.md) -----------------------------------------------------

ROWS = (1, 2, 4, 8, 16)
"""Rows per network call probed: batch sizes 1, 2, 4, 8 (× 2 guidance halves) and a lone unguided row."""


def invariance(model_name: str, threads: list[int], repeats: int) -> None:
    """Print whether a sample's network output keeps its bits across the rows of a call and its place
    among them, per layer type; and what evaluating rows one at a time (all layers, or only those that
    were not invariant) costs against one batched call."""
    import collections

    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    model = _model(model_name)
    unet = model.unet
    generator = torch.Generator().manual_seed(0)
    n = max(ROWS)
    x = torch.randn((n, *model.latent_shape), generator=generator)
    t = torch.randint(0, 1000, (n,), generator=generator)
    prompts = ["", "a red circle", "a blue square", "a green triangle"]
    emb = torch.cat([model.encode_prompt([prompts[i % len(prompts)]]) for i in range(n)])

    def kind(module: torch.nn.Module) -> str | None:
        if isinstance(module, Attention):
            return "attention block (projections + SDPA)"
        if isinstance(module, torch.nn.Conv2d):
            return f"conv {module.kernel_size[0]}×{module.kernel_size[1]}"
        if isinstance(module, torch.nn.Linear):
            return (
                "linear, time embedding (M = rows)" if _time_mlp(module, unet) else "linear, tokens (M = rows × tokens)"
            )
        if isinstance(module, torch.nn.GroupNorm):
            return "group norm"
        if isinstance(module, torch.nn.LayerNorm):
            return "layer norm"
        return None

    modules = {name: (kind(m), m) for name, m in unet.named_modules() if kind(m) is not None}
    inputs: dict[str, Any] = {}
    hooks = [m.register_forward_hook(_capture(inputs, name), with_kwargs=True) for name, (_, m) in modules.items()]
    attention_inputs: list[tuple] = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args: Any, **kwargs: Any) -> Any:
        attention_inputs.append((args, kwargs))
        return sdpa(*args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=emb, return_dict=False)
    finally:
        F.scaled_dot_product_attention = sdpa
        for hook in hooks:
            hook.remove()

    def placements() -> list[tuple[int, int, list[int]]]:
        out = []
        for rows in ROWS:
            for slot in sorted({0, rows // 2, rows - 1}):
                others = list(range(1, n))[: rows - 1]
                out.append((rows, slot, [*others[:slot], 0, *others[slot:]]))
        return out

    def split(fn: Any) -> list[int]:
        """The row counts whose output for sample 0 (at any slot) differs from its output in a lone call."""
        reference = fn(torch.tensor([0]))[0]
        differing = set()
        for rows, slot, index in placements():
            if not torch.equal(fn(torch.tensor(index))[slot], reference):
                differing.add(rows)
        return sorted(differing)

    def take(value: Any, index: torch.Tensor) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
            return value[index]
        if isinstance(value, tuple):
            return tuple(take(v, index) for v in value)
        if isinstance(value, dict):
            return {k: take(v, index) for k, v in value.items()}
        return value

    for count in threads:
        torch.set_num_threads(count)
        table: dict[str, list] = collections.defaultdict(lambda: [0, 0, collections.Counter()])
        with torch.no_grad():
            for name, (label, module) in modules.items():
                args, kwargs = inputs[name]
                differing = split(lambda i, m=module, a=args, k=kwargs: m(*take(a, i), **take(k, i)))
                table[label][1] += 1
                table[label][0] += not differing
                table[label][2][tuple(differing)] += bool(differing)
            for args, kwargs in attention_inputs:
                differing = split(lambda i, a=args, k=kwargs: sdpa(*take(a, i), **k))
                row = table["scaled dot-product attention"]
                row[1] += 1
                row[0] += not differing
                row[2][tuple(differing)] += bool(differing)
            whole = split(lambda i: unet(x[i], t[i], encoder_hidden_states=emb[i], return_dict=False)[0])
        print(
            f"\n{count} torch thread(s): a sample's output in calls of {'/'.join(map(str, ROWS))} rows, at the "
            "first, middle and last slot, against the same sample alone\n"
        )
        print("| layer type | instances | bit-identical in every call | the others differ at rows |")
        print("|---|---|---|---|")
        for label in sorted(table):
            same, total, how = table[label]
            detail = "; ".join(f"{'/'.join(map(str, rows))} ({k})" for rows, k in sorted(how.items()) if rows)
            print(f"| {label} | {total} | {same} | {detail or '—'} |")
        print(f"| whole UNet | 1 | {0 if whole else 1} | {'/'.join(map(str, whole)) or '—'} |")

        row_by_row = [m for _, (label, m) in modules.items() if label.startswith(("conv", "linear, time"))]
        costs = _invariance_costs(unet, x, t, emb, row_by_row, repeats)
        print(f"\n{count} torch thread(s): one network call, best of {repeats} (interleaved)\n")
        print("| rows | batched (ms) | every row alone (ms) | × | conv + time MLP row by row (ms) | × |")
        print("|---|---|---|---|---|---|")
        for rows in ROWS:
            b, r, h = (1000 * costs[rows, mode] for mode in ("batched", "rows", "hybrid"))
            print(f"| {rows} | {b:.1f} | {r:.1f} | {r / b:.2f} | {h:.1f} | {h / b:.2f} |")
        print(f"\n{count} torch thread(s): sample 0's bits at every slot of calls of 1…{max(ROWS)} rows, by class")
        print(f"(A: its bits alone; (ABA…): one class per slot)\n\n- batched: {_bit_classes(unet, x, t, emb, [])}")
        print(f"- conv + time MLP row by row: {_bit_classes(unet, x, t, emb, row_by_row)}")


def _time_mlp(module: Any, unet: Any) -> bool:
    """Whether a linear layer acts on the time embedding (one row per sample) rather than on tokens."""
    return any(module is m for m in unet.time_embedding.modules()) or any(
        module is getattr(block, "time_emb_proj", None) for block in unet.modules()
    )


def _capture(store: dict[str, Any], name: str) -> Any:
    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        store.setdefault(name, (args, kwargs))

    return hook


def _row_by_row(modules: list[Any], on: bool) -> None:
    """Make these modules evaluate each row of their input alone (or undo it)."""
    import torch

    for module in modules:
        if not on:
            module.__dict__.pop("forward", None)
            continue

        def forward(value: Any, m: Any = module) -> Any:
            return torch.cat([type(m).forward(m, value[i : i + 1]) for i in range(value.shape[0])])

        module.forward = forward


def _bit_classes(unet: Any, x: Any, t: Any, emb: Any, modules: list[Any], most: int = 16) -> str:
    """Sample 0's output at every slot of calls of 1…``most`` rows, as classes of identical bits: ``A`` is
    its bits alone; ``1: A; 2–3: B`` says calls of 2 or 3 rows give it other bits, at every slot (a row
    count whose slots differ lists each slot's class). ``modules`` evaluate row by row meanwhile."""
    import torch

    references: list[Any] = []
    described: list[tuple[str, int]] = []
    _row_by_row(modules, True)
    try:
        with torch.no_grad():
            for rows in range(1, most + 1):
                labels = []
                for slot in range(rows):
                    index = torch.tensor([*range(1, 1 + slot), 0, *range(1 + slot, rows)])
                    out = unet(x[index], t[index], encoder_hidden_states=emb[index], return_dict=False)[0][slot]
                    found = next((i for i, r in enumerate(references) if torch.equal(r, out)), None)
                    if found is None:
                        found = len(references)
                        references.append(out)
                    labels.append(chr(ord("A") + found))
                described.append((labels[0] if len(set(labels)) == 1 else "(" + "".join(labels) + ")", rows))
    finally:
        _row_by_row(modules, False)
    runs: list[list] = []
    for label, rows in described:
        if runs and runs[-1][0] == label:
            runs[-1][2] = rows
        else:
            runs.append([label, rows, rows])
    return "; ".join(f"{a}{f'–{b}' if b != a else ''}: {label}" for label, a, b in runs)


def _invariance_costs(unet: Any, x: Any, t: Any, emb: Any, modules: list[Any], repeats: int) -> dict:
    import torch

    def batched(rows: int) -> None:
        unet(x[:rows], t[:rows], encoder_hidden_states=emb[:rows], return_dict=False)

    def one_by_one(rows: int) -> None:
        for i in range(rows):
            unet(x[i : i + 1], t[i : i + 1], encoder_hidden_states=emb[i : i + 1], return_dict=False)

    best: dict[tuple[int, str], float] = {}
    with torch.no_grad():
        for repeat in range(repeats + 1):  # the first is a warm-up
            for rows in ROWS:
                for mode, run in (("batched", batched), ("rows", one_by_one), ("hybrid", batched)):
                    _row_by_row(modules, mode == "hybrid")
                    started = time.perf_counter()
                    run(rows)
                    seconds = time.perf_counter() - started
                    _row_by_row(modules, False)
                    if repeat:
                        best[rows, mode] = min(best.get((rows, mode), seconds), seconds)
    return best


def main(argv: list[str] | None = None) -> int:
    from bdia.workers.worker import default_batch_size, default_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: bdia.params.default_model() (shapes when bundled)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--guidance-scale", type=float, default=2.0, help="of the inversion and the edit")
    parser.add_argument("--concurrency", default="1,2,4,8", help="K: concurrent edits per burst")
    parser.add_argument("--workers", default="fixed:1,fixed:4,adaptive", help="worker configurations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the worker's default)")
    parser.add_argument("--logs", help="keep the stacks' logs in this folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument(
        "--invariance",
        action="store_true",
        help="instead: probe the batch invariance of the network's layers and its cost (docs/batch-invariance.md)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="bursts of each K per worker (the fastest counts)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each call (--invariance)")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if args.invariance:
        invariance(model, [args.threads] if args.threads else [1, 2], args.repeats)
        return 0
    params: dict[str, Any] = {"steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance_scale}
    concurrency = [int(k) for k in args.concurrency.split(",")]
    workers = [Worker.parse(spec) for spec in args.workers.split(",")]
    threads = args.threads if args.threads is not None else default_threads("cpu")

    started = time.perf_counter()
    engine = Engine(model, threads, params)
    with tempfile.TemporaryDirectory(prefix="bdia-throughput-") as temporary:
        logs = Path(args.logs or temporary)
        rows = measure(model, workers, threads, concurrency, params, logs, engine, args.rounds)
    seconds = time.perf_counter() - started
    alone = {key: statistics.median(row[key]["engine_s"] for row in rows) for key in ("edit", "cached_edit")}

    print(
        f"\nmodel {model}, {args.steps} steps, strength {args.strength:g}, guidance {args.guidance_scale:g}: "
        f"an edit of a new image is {engine.nfe} NFE (invert + edit), a cached edit "
        f"{rows[0]['cached_edit']['nfe']}; one worker, {threads} torch thread(s), CPU; "
        f"default widest batch {default_batch_size('cpu')}\n"
    )
    print("Lone edits, one at a time (median of 3; × engine: median of the ratios to the engine-alone edit run")
    print("just before each one):\n")
    print("| worker | edit (s) | engine alone (s) | × engine | cached edit (s) | engine alone (s) | × engine |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        e, c = row["edit"], row["cached_edit"]
        print(
            f"| {row['worker']} | {e['median_s']:.3f} | {e['engine_s']:.3f} | {e['ratio']:.2f} | "
            f"{c['median_s']:.3f} | {c['engine_s']:.3f} | {c['ratio']:.2f} |"
        )
    best = {k: max(row["bursts"][k]["jobs_per_s"] for row in rows) for k in concurrency}
    print(
        f"\nK concurrent edits of new images, {args.rounds} rounds, the fastest shown (engine alone, one edit "
        f"after another: {alone['edit']:.3f} s each):\n"
    )
    print("| K | worker | jobs/s | × best | p50 (s) | p95 (s) | p50 × engine | every round (jobs/s) |")
    print("|---|---|---|---|---|---|---|---|")
    for k in concurrency:
        print(f"| {k} | engine alone, one at a time | {1 / alone['edit']:.3f} | | | | | |")
        for row in rows:
            b = row["bursts"][k]
            print(
                f"| {k} | {row['worker']} | {b['jobs_per_s']:.3f} | {b['jobs_per_s'] / best[k]:.2f} | "
                f"{b['p50_s']:.2f} | {b['p95_s']:.2f} | {b['p50_s'] / alone['edit']:.2f} | "
                f"{', '.join(f'{r:.3f}' for r in b['rounds'])} |"
            )
    print(f"\n{seconds:.0f} s in all")
    if args.json:
        print(
            json.dumps(
                {"model": model, "threads": threads, **params, "engine": alone, "workers": rows, "seconds": seconds}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
