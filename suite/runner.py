"""``train_one(spec)``: one run, top to bottom, in one readable function.

Setup (seeds, precision, task, model, optimizer) -> a loop of fresh training
batches -> validation every ``eval_every`` steps with best-checkpoint selection ->
test metrics of the best-validation checkpoint. Step metrics stay on the device
as tensors and are read back at each evaluation (one host sync per interval, not
per step), where divergence is detected too. Metric rows go to ``sink`` in
batches; the store writes each batch in one transaction.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

import baselines
import tasks
from suite import diagnostics
from suite.checkpoint import Checkpointer, LoopState
from suite.env import environment
from suite.fastpath import make_train_step
from suite.spec import RunSpec, TrainConfig

Sink = Callable[[list[tuple], list[tuple]], None]


@dataclass
class RunResult:
    status: str  # done | diverged
    summary: dict[str, Any]
    reason: str | None = None
    env: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA generators as well


def set_precision(precision: str) -> None:
    """fp32 means true fp32: TF32 off for matmuls and cuDNN (PyTorch enables it for cuDNN)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def make_optimizer(cfg: TrainConfig, params, capturable: bool = False) -> torch.optim.Optimizer:
    """``capturable`` keeps Adam/RMSprop step counters on the device (CUDA graphs)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, capturable=capturable)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   capturable=capturable)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build(spec: RunSpec, device: torch.device) -> tuple[tasks.Task, torch.nn.Module]:
    """The task and the freshly initialised model of a spec (model init seeded by the spec)."""
    task = tasks.create(spec.task, **spec.task_args)
    seed_everything(spec.seed)
    model = baselines.create(spec.model, output_size=task.output_size, input_size=task.input_size,
                             vocab_size=task.vocab_size, target=task.target, **spec.model_args)
    baselines.set_fast_path(model, spec.train_config.fast_path)
    return task, model.to(device)


def recalibrate(model: torch.nn.Module, task: tasks.Task, cfg: TrainConfig, seed: int,
                device: torch.device) -> None:
    """Re-estimate batch-norm population statistics with the current weights before
    an evaluation (Cooijmans et al. 2017, "Recurrent Batch Normalization", report test
    numbers this way): the running averages gathered in training mix statistics of
    older weights. Uses ``cfg.recalibrate_batches`` training batches from a generator
    of its own, so the training data stream is untouched and runs stay reproducible."""
    mcfg = getattr(model, "cfg", None)
    if not (cfg.recalibrate_batches and hasattr(model, "recalibrate") and getattr(mcfg, "norm", None) == "batch"
            and getattr(mcfg, "norm_eval", "population") == "population"):
        return
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + 29)
    batches = (task.train_batch(cfg.batch_size, gen, device) for _ in range(cfg.recalibrate_batches))
    with torch.no_grad():
        model.recalibrate((b.x, b.lengths) for b in batches)


def _better(task: tasks.Task, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if task.higher_is_better else new < best


def _solved(task: tasks.Task, value: float) -> bool:
    if task.solved is None or math.isnan(value):
        return False
    return value >= task.solved if task.higher_is_better else value <= task.solved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(spec: RunSpec, sink: Sink | None = None, checkpoint: Checkpointer | None = None) -> RunResult:
    """Train and evaluate one run; metric rows go to ``sink(metrics, diagnostics)``.

    With ``checkpoint``, the run resumes from its saved state if there is one and
    saves it between steps as its policy says (suite/checkpoint.py).
    """
    ckpt = checkpoint or Checkpointer(None)
    sink = ckpt.record(sink or (lambda m, d: None))
    cfg = spec.train_config
    device = torch.device(spec.device)
    if device.type == "cuda":  # streams and graphs bind to the current device: make it this run's
        torch.cuda.set_device(device)
    set_precision(cfg.precision)
    task, model = build(spec, device)
    graphs = cfg.fast_path and device.type == "cuda"
    clip = cfg.clip if cfg.clip is not None else float("inf")
    opt = make_optimizer(cfg, model.parameters(), capturable=graphs)
    train_step = make_train_step(model, task.loss, opt, clip, device=device, bf16=cfg.precision == "bf16",
                                 graphs=graphs)
    gen = torch.Generator(device=device).manual_seed(spec.seed * 7919 + 17)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probe = next(task.eval_batches("val", min(cfg.batch_size, 64), device))

    def evaluate(split: str) -> dict[str, float]:
        recalibrate(model, task, cfg, spec.seed, device)
        model.eval()
        with amp:
            out = task.evaluate(model, split, device, cfg.eval_batch_size)
        model.train()
        return out

    def probe_due(step: int) -> bool:
        """Scheduled probes: every ``probe_every`` steps before the last (which the end probe covers)."""
        return bool(cfg.probe_every) and step % cfg.probe_every == 0 and step < cfg.max_steps

    def probe_flow(step: int) -> list[tuple]:
        flow = diagnostics.gradient_flow(model, task, probe).cpu().tolist()
        return [(step, "grad_flow", t, v) for t, v in enumerate(flow)]

    summary: dict[str, Any] = {"n_params": sum(p.numel() for p in model.parameters()),
                               "seq_len": task.seq_len}
    model.train()
    resumed = ckpt.resume(model, opt, gen)
    if resumed is None:
        sink([], probe_flow(0))
    # pending: (step, loss, grad norm, group norms) tensors not yet read back to the host
    step, pending, best_val, best_step, best_state, solved_step, solved_time, train_time = (
        resumed or LoopState.fresh())
    status, reason = "done", None
    # Start-up (train_step.warmup_steps) is timed apart from the steady state, from this
    # process's first step: a resumed run warms up (and captures its graph) again.
    warm = (step, train_time, step + train_step.warmup_steps)  # (start step, start time, end step)
    warm_end: tuple[int, float] | None = None  # (step, train time) when start-up ended
    t0 = time.perf_counter()
    while step < cfg.max_steps:
        if ckpt.due(step):  # between steps: everything of step `step` is done or buffered
            train_time += time.perf_counter() - t0
            ckpt.save(model, opt, gen, LoopState(step, pending, best_val, best_step, best_state,
                                                 solved_step, solved_time, train_time))
            t0 = time.perf_counter()
        step += 1
        batch = task.train_batch(cfg.batch_size, gen, device)
        out = train_step(batch)
        if step % cfg.log_every == 0:
            pending.append((step, out.loss, out.grad_norm, out.groups))
        if step == warm[2]:
            _sync(device)
            warm_end = (step, train_time + time.perf_counter() - t0)
        if probe_due(step):  # on its own schedule, not only at evaluations; not training time
            _sync(device)
            paused = time.perf_counter()
            sink([], probe_flow(step))
            t0 += time.perf_counter() - paused
        at_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
        over_budget = cfg.time_budget_s is not None and train_time + time.perf_counter() - t0 > cfg.time_budget_s
        if not (at_eval or over_budget):
            continue
        _sync(device)
        train_time += time.perf_counter() - t0
        rows, bad_step = _drain(pending, clip)
        pending = []
        if bad_step is not None:
            sink(rows, [])
            status, reason = "diverged", f"non-finite loss or gradient at step {bad_step}"
            summary["diverged_step"] = bad_step
            break
        val = evaluate("val")
        rows += [(step, "val", k, v) for k, v in val.items()]
        rows.append((step, "train", "wall_time", train_time))
        sink(rows, [])
        primary = val.get(task.primary, float("nan"))
        if not math.isfinite(primary):  # e.g. a blow-up between two logged steps
            status, reason = "diverged", f"non-finite validation {task.primary} at step {step}"
            summary["diverged_step"] = step
            break
        if _better(task, primary, best_val):
            best_val, best_step = primary, step
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if solved_step is None and _solved(task, primary):
            solved_step, solved_time = step, train_time
        if (cfg.early_stop and solved_step is not None) or over_budget:
            break
        t0 = time.perf_counter()

    steps_done = step
    summary.update(steps=steps_done, train_time_s=train_time, **throughput(
        steps_done, train_time, warm[:2], warm_end, cfg.batch_size))
    summary["timesteps_per_s"] = (summary["samples_per_s"] or 0.0) * task.seq_len or None
    summary["path"] = f"{train_step.path}/{baselines.recurrence_path(model)}"  # e.g. cuda_graph/fused
    if getattr(train_step, "failure", None):
        summary["graph_failure"] = train_step.failure
    summary["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                              if device.type == "cuda" else None)
    if status == "done":
        if not probe_due(steps_done):  # end-of-training profile, before reloading the best state
            sink([], probe_flow(steps_done))
        if best_state is not None:
            model.load_state_dict(best_state)
        test = evaluate("test")
        sink([(best_step, "test", k, v) for k, v in test.items()], [])
        summary.update({f"test_{k}": v for k, v in test.items()})
        summary.update(best_val=best_val, best_step=best_step, solved_step=solved_step,
                       solved_time_s=solved_time, solved=solved_step is not None)
    return RunResult(status, summary, reason, environment(spec.device))


def throughput(steps: int, train_time: float, start: tuple[int, float], warm_end: tuple[int, float] | None,
               batch_size: int) -> dict[str, Any]:
    """Steady-state speed: ``samples_per_s`` and ``step_ms`` over the steps after start-up
    (``warmup_steps`` steps taking ``warmup_s``, reported apart). ``start`` and ``warm_end``
    are (step, training time) where this process began and where its start-up ended; a run
    that ended within its start-up reports its whole time."""
    if warm_end is None or steps <= warm_end[0] or train_time <= warm_end[1]:
        n, t, warm_steps, warm_s = steps - start[0], train_time - start[1], steps - start[0], train_time - start[1]
    else:
        n, t = steps - warm_end[0], train_time - warm_end[1]
        warm_steps, warm_s = warm_end[0] - start[0], warm_end[1] - start[1]
    return {"samples_per_s": n * batch_size / t if n > 0 and t > 0 else None,
            "step_ms": 1000.0 * t / n if n > 0 else None,
            "warmup_steps": warm_steps, "warmup_s": warm_s}


def _drain(pending: list, clip: float) -> tuple[list[tuple], int | None]:
    """Turn buffered per-step tensors into metric rows; report the first non-finite step."""
    if not pending:
        return [], None
    losses = torch.stack([p[1].float() for p in pending]).cpu().tolist()
    norms = torch.stack([p[2].float() for p in pending]).cpu().tolist()
    rows, bad = [], None
    for (step, _, _, groups), loss, gn in zip(pending, losses, norms):
        rows += [(step, "train", "loss", loss), (step, "train", "grad_norm", gn),
                 (step, "train", "clipped", float(gn > clip))]
        rows += [(step, "train", f"grad_norm/{g}", v.item()) for g, v in groups.items()]
        if bad is None and not (math.isfinite(loss) and math.isfinite(gn)):
            bad = step
    return rows, bad
