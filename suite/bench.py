"""Training-step speed of every model at fixed shapes, as a ratio to cuDNN LSTM.

One training step is forward + backward + gradient clipping + Adam update on a
random batch, through the same ``make_train_step`` the runner uses (so the CUDA
graph fast path is what gets timed on CUDA). Times are medians over repeats after
warm-up; on CUDA each repeat is timed with CUDA events. The ratio column is
throughput relative to ``lstm`` (cuDNN on CUDA, ``nn.LSTM`` on CPU) on the same
shape and device: ``lstm_ms / model_ms`` (above 1 is faster than cuDNN LSTM).

With ``seeds`` S > 1, every model that can be stacked (``baselines/stack.py``)
trains S seeds per step on S batches of the shape; its ratio is then per seed,
``lstm_ms / (model_ms / S)``: the throughput of training S seeds relative to
training them one after another with cuDNN LSTM. Models that cannot be stacked
(cuDNN modules) are timed one seed per step, as they would be trained.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

import baselines
from suite.env import cpu_capability, device_name
from suite.fastpath import make_train_step
from tasks.base import Batch


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    H: int
    input_size: int | None  # real-valued inputs
    vocab: int | None  # token inputs
    output_size: int
    target: str  # last | every


SHAPES = {
    "seq-mnist": Shape("seq-mnist", 784, 100, 100, 1, None, 10, "last"),
    "adding": Shape("adding", 1000, 128, 128, 2, None, 1, "last"),
    "char-lm": Shape("char-lm", 100, 64, 1000, None, 50, 50, "every"),
    "small": Shape("small", 50, 32, 64, 2, None, 1, "last"),
    "tiny": Shape("tiny", 6, 4, 8, 2, None, 1, "last"),  # for tests: checks that every model runs
}


def make_batch(shape: Shape, device: torch.device, seed: int = 0, seeds: int = 1) -> Batch:
    """A random batch of the shape; ``seeds`` > 1: that many, concatenated (seed-major)."""
    if seeds > 1:
        parts = [make_batch(shape, device, seed + s) for s in range(seeds)]
        return Batch(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    g = torch.Generator(device=device).manual_seed(seed)
    if shape.vocab is not None:
        x = torch.randint(0, shape.vocab, (shape.B, shape.T), generator=g, device=device)
    else:
        x = torch.rand(shape.B, shape.T, shape.input_size, generator=g, device=device)
    if shape.target == "every":
        y = torch.randint(0, shape.output_size, (shape.B, shape.T), generator=g, device=device)
    elif shape.output_size == 1:
        y = torch.rand(shape.B, 1, generator=g, device=device)
    else:
        y = torch.randint(0, shape.output_size, (shape.B,), generator=g, device=device)
    return Batch(x, y)


def loss_for(shape: Shape):
    if shape.output_size == 1:
        return lambda out, b: F.mse_loss(out, b.y)
    return lambda out, b: F.cross_entropy(out.reshape(-1, out.shape[-1]), b.y.reshape(-1))


def build_step(model_name: str, shape: Shape, device: torch.device, *, fast_path: bool = True,
               seeds: int = 1, **overrides: Any):
    """A ready training step (model, Adam, clip 1.0) for ``model_name`` at ``shape``, in
    true fp32 as the runner's fp32 runs (this sets TF32 off, which PyTorch allows for
    cuDNN by default; ``bench`` puts the switches back); ``fast_path=False`` times the
    reference: the explicit loop, eager. ``seeds`` > 1 stacks that many seeds where the
    model can be stacked (``step.seeds`` says)."""
    from baselines.stack import SeedStack, stack_problem
    from suite.runner import set_precision

    set_precision("fp32")

    models = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        m = baselines.create(model_name, output_size=shape.output_size, input_size=shape.input_size,
                             vocab_size=shape.vocab, target=shape.target, hidden_size=shape.H,
                             **overrides).to(device)
        baselines.set_fast_path(m, fast_path)
        models.append(m)
        if stack_problem(m) is not None:
            break
    model = SeedStack(models) if len(models) > 1 else models[0]
    model.train()
    graphs = fast_path and device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=graphs)
    step = make_train_step(model, loss_for(shape), opt, 1.0, device=device, graphs=graphs)
    step.seeds = len(models)
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _repeat_ms(step, batch: Batch, device: torch.device, steps: int) -> float:
    """Milliseconds per step over ``steps`` steps (CUDA events on CUDA)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step(batch)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return 1000 * (time.perf_counter() - t0) / steps


def time_step(step, batch: Batch, device: torch.device, *, warmup: int = 5, repeats: int = 5,
              steps_per_repeat: int = 3, beside: tuple | None = None) -> list[float] | tuple[list[float], list[float]]:
    """Milliseconds per step for each repeat (after ``warmup`` steps). ``beside``: a
    second (step, batch) timed in alternation with the first, repeat by repeat; then
    both lists are returned, so that a drift of the machine's speed hits both alike."""
    pairs = [(step, batch)] + ([beside] if beside else [])
    for s, b in pairs:
        for _ in range(warmup):
            s(b)
    _sync(device)
    times: list[list[float]] = [[] for _ in pairs]
    for _ in range(repeats):
        for (s, b), ts in zip(pairs, times):
            ts.append(_repeat_ms(s, b, device, steps_per_repeat))
    return (times[0], times[1]) if beside else times[0]


def bench(models: list[str], shapes: list[str], device: str = "cpu", *, fast_path: bool = True,
          warmup: int = 5, repeats: int = 5, steps_per_repeat: int = 3, seeds: int = 1,
          threads: int | None = None,
          on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (model, shape): ms per step (median), peak memory, ratio to lstm
    (per seed when ``seeds`` > 1 stacks the model; see the module docstring).

    ``threads``: PyTorch's CPU threads while timing (default: as set, normally one per
    core). The CPU reference ``nn.LSTM`` (oneDNN) spreads its work over the threads; the
    custom cells' time loops are serial apart from their matrix products, so their
    ratio depends on the thread count, which each row records.

    ``lstm`` is measured first on each shape (it is the reference of the ratio);
    ``on_row`` receives each row as soon as it is measured. On the CPU, whose speed
    drifts (a shared machine, frequency scaling), each model's repeats alternate with
    repeats of ``lstm``, and its ratio is the median of the ratios of each repeat to the
    ``lstm`` repeat beside it (a drift then cancels in each pair); on CUDA the first
    ``lstm`` measurement serves.
    """
    before = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(models, shapes, device, fast_path, warmup, repeats, steps_per_repeat, seeds, on_row)
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]


def _bench(models, shapes, device, fast_path, warmup, repeats, steps_per_repeat, seeds, on_row) -> list[dict[str, Any]]:
    dev = torch.device(device)
    rows = []
    names = list(dict.fromkeys(["lstm", *models]))
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        batch = make_batch(shape, dev)
        # One untimed pass first: library initialisation must not land on the reference.
        time_step(build_step("lstm", shape, dev, fast_path=fast_path), batch, dev,
                  warmup=warmup, repeats=1, steps_per_repeat=1)
        ref_ms, ref_step = None, None
        for name in names:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            step = build_step(name, shape, dev, fast_path=fast_path, seeds=seeds if name != "lstm" else 1)
            step_batch = make_batch(shape, dev, seeds=step.seeds) if step.seeds > 1 else batch
            timing = dict(warmup=warmup, repeats=repeats, steps_per_repeat=steps_per_repeat)
            if ref_step is not None:  # the CPU: lstm timed beside the model, repeat by repeat
                times, ref_times = time_step(step, step_batch, dev, beside=(ref_step, batch), **timing)
                ref_ms = statistics.median(ref_times)
                ratio = statistics.median(r * step.seeds / t for r, t in zip(ref_times, times))
            else:
                times = time_step(step, step_batch, dev, **timing)
            ms = statistics.median(times)
            if name == "lstm":
                ref_ms, ratio = ms, 1.0
                ref_step = step if dev.type == "cpu" else None
            elif ref_step is None:
                ratio = ref_ms * step.seeds / ms
            row = {
                "model": name, "shape": shape_name, "T": shape.T, "B": shape.B, "H": shape.H, "seeds": step.seeds,
                "ms": ms, "ms_min": min(times), "ms_max": max(times), "ratio_to_lstm": ratio,
                "lstm_ms": ref_ms,
                "peak_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
                "path": f"{step.path}/{baselines.recurrence_path(step.model)}", "device": device,
                "device_name": device_name(device), "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu_capability": cpu_capability() if dev.type == "cpu" else None,
            }
            del step
            if name in models or name == "lstm":
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


HEADER = f"{'model':<14}{'shape':<10}{'seeds':>6}{'ms/step':>9}{'min':>9}{'max':>9}{'peak MB':>8}{'x lstm':>8}  path"


def format_row(r: dict[str, Any]) -> str:
    mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
    return (f"{r['model']:<14}{r['shape']:<10}{r.get('seeds', 1):>6}{r['ms']:>9.2f}{r['ms_min']:>9.2f}{r['ms_max']:>9.2f}"
            f"{mem:>8}{r['ratio_to_lstm']:>8.3f}  {r['path']}")


def footer(r: dict[str, Any]) -> str:
    n = r.get("threads")
    threads = f", {n} CPU thread{'s' if n != 1 else ''}" if n else ""
    if r.get("cpu_capability"):
        threads += f" ({r['cpu_capability']})"
    return (f"device: {r['device_name']} ({r['device']}), torch {r['torch']}{threads}; x lstm = throughput per seed "
            "relative to lstm (cuDNN/nn.LSTM) on the same shape; seeds = seeds stacked in one step; "
            "path = training step/recurrence")


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER, "-" * len(HEADER), *map(format_row, rows)]
    return "\n".join(lines + ([footer(rows[0])] if rows else []))


__all__ = ["SHAPES", "Shape", "bench", "build_step", "format_table", "make_batch", "time_step"]
