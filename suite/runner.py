"""``train_one(spec)``: one run, top to bottom, in one readable function.

Setup (seeds, precision, task, model, optimizer) -> a loop of fresh training
batches -> validation every ``eval_every`` steps with best-checkpoint selection ->
test metrics of the best-validation checkpoint. Step metrics stay on the device
as tensors and are read back at each evaluation (one host sync per interval, not
per step), where divergence is detected too. Metric rows go to ``sink`` in
batches; the store writes each batch in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import baselines
import tasks
from suite import diagnostics
from suite.checkpoint import Checkpointer, LoopState, StackCheckpointer, StackState
from suite.env import environment
from suite.fastpath import make_train_step
from suite.spec import RunSpec, TrainConfig
from tasks.base import Batch

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
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, capturable=capturable)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.eps, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, capturable=capturable)
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


class TrainingPeak:
    """Peak CUDA memory of the training steps alone (None on other devices). Probes and
    evaluations are set aside (``aside``): a probe runs an explicit loop under autograd
    and can hold more than a training step, so the peak so far is kept before them and
    the device's counter restarts after them."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, 0.0
        self._restart()

    def _now(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else 0.0

    def _restart(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        self.mb = max(self.mb, self._now())
        try:
            yield
        finally:
            self._restart()

    def value(self) -> float | None:
        return max(self.mb, self._now()) if self.device.type == "cuda" else None


class RunLoop:
    """One run's bookkeeping between training steps: logged step metrics (kept on the
    device until an evaluation), gradient-flow probes, validation with best-checkpoint
    selection, divergence, early stopping, and the final test evaluation and summary.
    ``train_one`` drives one; ``train_stacked`` drives one per stacked seed."""

    def __init__(self, spec: RunSpec, task: tasks.Task, model: torch.nn.Module, sink: Sink,
                 device: torch.device) -> None:
        self.spec, self.task, self.model, self.sink, self.device = spec, task, model, sink, device
        self.peak = TrainingPeak(device)  # replaced once training is set up; a stack's runs share one
        self.cfg = cfg = spec.train_config
        self.clip = cfg.clip if cfg.clip is not None else float("inf")
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.probe_batch = next(task.eval_batches("val", min(cfg.batch_size, 64), device))
        chance = task.chance  # recorded: the report cannot compute one that needs the data (char-lm, listops)
        self.summary: dict[str, Any] = {"n_params": sum(p.numel() for p in model.parameters()),
                                        "seq_len": task.seq_len,
                                        "chance": None if chance is None else float(chance)}
        self.status, self.reason = "done", None
        self.load(LoopState.fresh())

    def load(self, state: LoopState) -> None:
        # pending: (step, loss, grad norm, group norms) tensors not yet read back to the host
        (self.step, self.pending, self.best_val, self.best_step, self.best_state, self.solved_step,
         self.solved_time, self.train_time) = state

    def loop_state(self) -> LoopState:
        return LoopState(self.step, self.pending, self.best_val, self.best_step, self.best_state,
                         self.solved_step, self.solved_time, self.train_time)

    def evaluate(self, split: str) -> dict[str, float]:
        recalibrate(self.model, self.task, self.cfg, self.spec.seed, self.device)
        self.model.eval()
        with self.amp:
            out = self.task.evaluate(self.model, split, self.device, self.cfg.eval_batch_size)
        self.model.train()
        return out

    def probe_due(self) -> bool:
        """Scheduled probes: every ``probe_every`` steps before the last (which the end probe covers)."""
        every = self.cfg.probe_every
        return bool(every) and self.step % every == 0 and self.step < self.cfg.max_steps

    def probe(self) -> None:
        with self.peak.aside():
            flow = diagnostics.gradient_flow(self.model, self.task, self.probe_batch).cpu().tolist()
        self.sink([], [(self.step, "grad_flow", t, v) for t, v in enumerate(flow)])

    def log(self, out: Any) -> None:
        """Keep the step's loss and gradient norm on the device until the next read-back:
        every step's, so that a blow-up between two logged steps is caught (``_drain``),
        with its group norms (None: checked, not stored) on the steps ``log_every`` logs."""
        logged = self.step % self.cfg.log_every == 0
        self.pending.append((self.step, out.loss, out.grad_norm, out.groups if logged else None))

    def at_eval(self) -> bool:
        """Read back the logged steps and validate (training time is up to date); True
        when the run ends here: diverged, or solved with early stopping."""
        rows, bad_step = _drain(self.pending, self.clip)
        self.pending = []
        if bad_step is not None:
            self.sink(rows, [])
            return self.diverged(f"non-finite loss or gradient at step {bad_step}", bad_step)
        with self.peak.aside():
            val = self.evaluate("val")
        rows += [(self.step, "val", k, v) for k, v in val.items()]
        rows.append((self.step, "train", "wall_time", self.train_time))
        self.sink(rows, [])
        primary = val.get(self.task.primary, float("nan"))
        bad = next((k for k, v in {self.task.primary: primary, **val}.items() if not math.isfinite(v)), None)
        if bad is not None:  # an accuracy stays finite where the model's outputs are NaN: its loss does not
            return self.diverged(f"non-finite validation {bad} at step {self.step}", self.step)
        if _better(self.task, primary, self.best_val):
            self.best_val, self.best_step = primary, self.step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.solved_step is None and _solved(self.task, primary):
            self.solved_step, self.solved_time = self.step, self.train_time
        return self.cfg.early_stop and self.solved_step is not None

    def diverged(self, reason: str, step: int) -> bool:
        self.status, self.reason = "diverged", reason
        self.summary["diverged_step"] = step
        return True

    def finish(self, speed: dict[str, Any], path: str) -> RunResult:
        """The summary (``speed``: ``throughput``'s fields) and, unless diverged, the end
        probe and the test metrics of the best-validation state."""
        summary = self.summary
        summary.update(steps=self.step, train_time_s=self.train_time, **speed)
        summary["path"] = path  # training step/recurrence, e.g. cuda_graph/scan
        summary["peak_mem_mb"] = self.peak.value()  # of training: probes and evaluations aside
        if self.status == "done":
            if not self.probe_due():  # end-of-training profile, before reloading the best state
                self.probe()
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            test = self.evaluate("test")
            self.sink([(self.best_step, "test", k, v) for k, v in test.items()], [])
            summary.update({f"test_{k}": v for k, v in test.items()})
            summary.update(best_val=self.best_val, best_step=self.best_step, solved_step=self.solved_step,
                           solved_time_s=self.solved_time, solved=self.solved_step is not None)
        return RunResult(self.status, summary, self.reason, environment(self.spec.device))


class StartUp:
    """Times the first ``steps`` training steps of this process (start-up: first-use
    allocation, CUDA-graph warm-up and capture) apart from the steady state."""

    def __init__(self, step: int, train_time: float, steps: int) -> None:
        self.start, self.end_step = (step, train_time), step + steps
        self.end: tuple[int, float] | None = None  # (step, training time) when start-up ended
        self.timesteps = [0, 0]  # sample-steps run (batch x its length) in start-up, after it

    def after(self, step: int, device: torch.device, train_time: Callable[[], float], batch: Batch) -> None:
        """Call after each step, with its ``batch`` (of one seed); ``train_time()`` gives the
        training time so far, read once the device has finished the start-up's queued work."""
        self.timesteps[step > self.end_step] += batch.x.shape[0] * batch.x.shape[1]
        if step == self.end_step:
            _sync(device)
            self.end = (step, train_time())

    def speed(self, steps: int, train_time: float, batch_size: int) -> dict[str, Any]:
        return throughput(steps, train_time, self.start, self.end, batch_size, self.timesteps)


def _setup(spec: RunSpec) -> torch.device:
    device = torch.device(spec.device)
    if device.type == "cuda":  # streams and graphs bind to the current device: make it this run's
        if device.index is None:  # plain "cuda": the current device (set_device needs an index)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    set_precision(spec.train_config.precision)
    return device


def _finish(run: RunLoop, speed: dict[str, Any], train_step: Any, recurrence: str) -> RunResult:
    """``run.finish`` with the path: how the training step and the recurrence ran (e.g.
    cuda_graph/scan; ``recurrence`` read after a training step, since an evaluation pass
    may take another) and why a CUDA graph could not be used, if it could not."""
    result = run.finish(speed, f"{train_step.path}/{recurrence}")
    if getattr(train_step, "failure", None):
        result.summary["graph_failure"] = train_step.failure
    return result


def train_one(spec: RunSpec, sink: Sink | None = None, checkpoint: Checkpointer | None = None) -> RunResult:
    """Train and evaluate one run; metric rows go to ``sink(metrics, diagnostics)``.

    With ``checkpoint``, the run resumes from its saved state if there is one and
    saves it between steps as its policy says (suite/checkpoint.py).
    """
    ckpt = checkpoint or Checkpointer(None)
    sink = ckpt.record(sink or (lambda m, d: None))
    cfg = spec.train_config
    device = _setup(spec)
    task, model = build(spec, device)
    graphs = cfg.fast_path and device.type == "cuda"
    run = RunLoop(spec, task, model, sink, device)
    opt = make_optimizer(cfg, model.parameters(), capturable=graphs)
    train_step = make_train_step(model, task.loss, opt, run.clip, device=device, bf16=cfg.precision == "bf16",
                                 graphs=graphs)
    gen = torch.Generator(device=device).manual_seed(spec.seed * 7919 + 17)
    run.peak = TrainingPeak(device)  # from here: the model, optimizer and step are allocated
    model.train()
    resumed = ckpt.resume(model, opt, gen)
    if resumed is None:
        run.probe()
    else:
        run.load(resumed)
    # A resumed run warms up (and captures its graph) again: start-up counts from here.
    start = StartUp(run.step, run.train_time, train_step.warmup_steps)
    recurrence = "none"
    t0 = time.perf_counter()
    while run.step < cfg.max_steps:
        if ckpt.due(run.step):  # between steps: everything of step `step` is done or buffered
            run.train_time += time.perf_counter() - t0
            ckpt.save(model, opt, gen, run.loop_state())
            t0 = time.perf_counter()
        run.step += 1
        batch = task.train_batch(cfg.batch_size, gen, device)
        run.log(train_step(batch))
        if recurrence == "none":  # the first step's (an evaluation pass may take another path)
            recurrence = baselines.recurrence_path(model)
        start.after(run.step, device, lambda: run.train_time + time.perf_counter() - t0, batch)
        if run.probe_due():  # on its own schedule, not only at evaluations; not training time
            _sync(device)
            paused = time.perf_counter()
            run.probe()
            t0 += time.perf_counter() - paused
        at_eval = run.step % cfg.eval_every == 0 or run.step == cfg.max_steps
        over_budget = (cfg.time_budget_s is not None
                       and run.train_time + time.perf_counter() - t0 > cfg.time_budget_s)
        if not (at_eval or over_budget):
            continue
        _sync(device)
        run.train_time += time.perf_counter() - t0
        if run.at_eval() or over_budget:
            break
        t0 = time.perf_counter()
    return _finish(run, start.speed(run.step, run.train_time, cfg.batch_size), train_step, recurrence)


class NotStackable(ValueError):
    """The runs given to ``train_stacked`` cannot train as one stack (the message says why)."""


def stack_problem(cfg: TrainConfig, task: tasks.Task, model: torch.nn.Module) -> str | None:
    """Why seeds of this configuration cannot train stacked (see ``train_stacked``), or None."""
    from baselines.stack import stack_problem as model_problem

    if cfg.precision == "bf16":
        return "bf16 runs are not stacked"
    if task.train_batch(2, torch.Generator().manual_seed(0), torch.device("cpu")).lengths is not None:
        return "its batches are padded"
    return model_problem(model)


def stackable(spec: RunSpec) -> bool:
    """Whether seeds of ``spec`` can train as one stack (builds its task and model on the CPU)."""
    task = tasks.create(spec.task, **spec.task_args)
    model = baselines.create(spec.model, output_size=task.output_size, input_size=task.input_size,
                             vocab_size=task.vocab_size, target=task.target, **spec.model_args)
    baselines.set_fast_path(model, spec.train_config.fast_path)
    return stack_problem(spec.train_config, task, model) is None


def train_stacked(specs: list[RunSpec], sinks: list[Sink | None],
                  on_result: Callable[[int, RunResult], None] | None = None,
                  checkpoint: StackCheckpointer | None = None) -> list[RunResult | None]:
    """Train the seeds ``specs`` (one spec up to its seed) as one ``SeedStack``
    (baselines/stack.py): each run records what ``train_one`` records for it, up to
    the summation order of the stacked matrix products.

    Every seed keeps its own model initialisation, data stream, evaluations, probes,
    early stop and divergence; a seed that stops stays in the stack (its rows are
    still computed, not recorded) until the last one stops, and its result goes to
    ``on_result(index, result)`` at once. A seed whose sink is None is trained but
    never recorded and has no result (a resumed stack's run that was recorded since its
    checkpoint). Each of the S runs is charged 1/S of the stack's training time and
    peak memory: its wall-time rows, time to solve, time budget, throughput and
    start-up are its share, so that they read as the cost of that run (``seed_stack``:
    S in its summary). With ``checkpoint`` the stack resumes from its saved state if
    there is one and saves it between steps as its policy says, as ``train_one`` does
    for one run. Raises ``NotStackable`` before training when the specs differ in more
    than the seed or their configuration cannot be stacked.
    """
    from baselines.stack import SeedStack

    first = specs[0]
    if len(specs) < 2 or any(dataclasses.replace(s, seed=first.seed) != first for s in specs):
        raise NotStackable("a stack takes two or more runs that differ in their seed only")
    cfg = first.train_config
    device = _setup(first)
    built = [build(spec, device) for spec in specs]
    problem = stack_problem(cfg, *built[0])
    if problem:
        raise NotStackable(f"{first.model} on {first.task} cannot be stacked: {problem}")
    ckpt = checkpoint or StackCheckpointer(None)
    recorded = [sink is not None for sink in sinks]
    sinks = ckpt.record_runs(list(sinks))
    stack = SeedStack([model for _, model in built])
    graphs = cfg.fast_path and device.type == "cuda"
    runs = [RunLoop(spec, task, model, sink or _unrecorded, device)
            for spec, (task, model), sink in zip(specs, built, sinks)]
    S = len(runs)
    opt = make_optimizer(cfg, stack.parameters(), capturable=graphs)
    train_step = make_train_step(stack, built[0][0].loss, opt, runs[0].clip, device=device, graphs=graphs)
    gens = [torch.Generator(device=device).manual_seed(spec.seed * 7919 + 17) for spec in specs]
    peak = TrainingPeak(device)
    for run in runs:
        run.peak = peak
    stack.train()
    resumed = ckpt.resume_stack(stack, opt, gens)
    if resumed is None:
        step, train_time, active = 0, 0.0, [i for i in range(S) if recorded[i]]  # train_time: the stack's
        for run in runs:
            run.probe()
    else:
        step, train_time = resumed.step, resumed.train_time
        active = [i for i in resumed.active if recorded[i]]  # resume_stack: every recorded seed is among them
        for i in active:
            runs[i].load(resumed.loops[i])
    results: dict[int, RunResult] = {}
    # A resumed stack warms up (and captures its graph) again: start-up counts from here.
    start = StartUp(step, train_time / S, train_step.warmup_steps)
    recurrence = "none"
    t0 = time.perf_counter()

    def finish(i: int) -> None:
        run = runs[i]
        run.summary["seed_stack"] = S
        run.summary["stack_id"] = first.run_id  # the stack's runs share one timing (reports.cost)
        res = _finish(run, start.speed(run.step, run.train_time, cfg.batch_size), train_step, recurrence)
        if res.summary.get("peak_mem_mb") is not None:
            res.summary["peak_mem_mb"] /= S
        results[i] = res
        if on_result is not None:
            on_result(i, res)

    while active and step < cfg.max_steps:
        if ckpt.due(step):  # between steps, as train_one
            train_time += time.perf_counter() - t0
            ckpt.save_stack(stack, opt, gens, StackState(step, train_time, active,
                                                          {i: runs[i].loop_state() for i in active}))
            t0 = time.perf_counter()
        step += 1
        batches = [task.train_batch(cfg.batch_size, gen, device) for (task, _), gen in zip(built, gens)]
        outs = train_step(Batch(torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])))
        if recurrence == "none":
            recurrence = baselines.recurrence_path(runs[0].model)
        for i in active:
            runs[i].step = step
            runs[i].log(outs[i])
        start.after(step, device, lambda: (train_time + time.perf_counter() - t0) / S, batches[0])
        due = [i for i in active if runs[i].probe_due()]
        if due:
            _sync(device)
            paused = time.perf_counter()
            for i in due:
                runs[i].probe()
            t0 += time.perf_counter() - paused
        at_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
        over_budget = (cfg.time_budget_s is not None
                       and (train_time + time.perf_counter() - t0) / S > cfg.time_budget_s)
        if not (at_eval or over_budget):
            continue
        _sync(device)
        train_time += time.perf_counter() - t0
        for i in list(active):
            runs[i].train_time = train_time / S
            if runs[i].at_eval() or over_budget:
                active.remove(i)
                finish(i)
        t0 = time.perf_counter()
    for i in active:
        finish(i)
    return [results.get(i) for i in range(S)]


def _unrecorded(metrics: list[tuple], diagnostics: list[tuple]) -> None:
    """The sink of a stacked seed that is trained but not recorded."""


def throughput(steps: int, train_time: float, start: tuple[int, float], warm_end: tuple[int, float] | None,
               batch_size: int, timesteps: Sequence[int] = (0, 0)) -> dict[str, Any]:
    """Steady-state speed: ``samples_per_s``, ``timesteps_per_s`` and ``step_ms`` over the
    steps after start-up (``warmup_steps`` steps taking ``warmup_s``, reported apart).
    ``start`` and ``warm_end`` are (step, training time) where this process began and where
    its start-up ended; a run that ended within its start-up reports its whole time.
    ``warmup_end_step``: the step (counted from the run's start, not this process's) where
    that start-up ended, so that a resumed run's is taken from what came after it only.
    ``timesteps``: the sample-steps its batches held in start-up and after (a padded task's
    batches are as long as their longest sequence, not the task's longest)."""
    steady = not (warm_end is None or steps <= warm_end[0] or train_time <= warm_end[1])
    if not steady:
        n, t, warm_steps, warm_s = steps - start[0], train_time - start[1], steps - start[0], train_time - start[1]
    else:
        n, t = steps - warm_end[0], train_time - warm_end[1]
        warm_steps, warm_s = warm_end[0] - start[0], warm_end[1] - start[1]
    ran = timesteps[1] if steady else sum(timesteps)
    return {"samples_per_s": n * batch_size / t if n > 0 and t > 0 else None,
            "timesteps_per_s": ran / t if n > 0 and t > 0 and ran else None,
            "step_ms": 1000.0 * t / n if n > 0 else None,
            "warmup_steps": warm_steps, "warmup_s": warm_s, "warmup_end_step": start[0] + warm_steps}


def _drain(pending: list, clip: float) -> tuple[list[tuple], int | None]:
    """Turn buffered per-step tensors into metric rows (the logged steps': those with
    group norms); report the first non-finite step, logged or not."""
    if not pending:
        return [], None
    losses = torch.stack([p[1].float() for p in pending]).cpu().tolist()
    norms = torch.stack([p[2].float() for p in pending]).cpu().tolist()
    rows, bad = [], None
    for (step, _, _, groups), loss, gn in zip(pending, losses, norms):
        if groups is not None:
            rows += [(step, "train", "loss", loss), (step, "train", "grad_norm", gn),
                     (step, "train", "clipped", float(gn > clip))]
            rows += [(step, "train", f"grad_norm/{g}", v.item()) for g, v in groups.items()]
        if bad is None and not (math.isfinite(loss) and math.isfinite(gn)):
            bad = step
    return rows, bad
