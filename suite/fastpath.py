"""The training step, eager or captured whole in a CUDA graph.

A custom recurrent cell in a Python time loop issues tens of small kernels per
time step, so at small hidden sizes a training step is bound by kernel launches,
not arithmetic (ANCHORS.md: a per-step BN-LSTM is ~130x slower than cuDNN LSTM at
seq-MNIST shape, and CUDA graphs recover ~6x). ``GraphedTrainStep`` records one
whole step (forward, backward, gradient clipping, optimizer update, per-group
gradient norms) once and replays it: one launch per step instead of thousands.

The math is the same as ``EagerTrainStep``: the first ``WARMUP`` steps run eagerly
on a side stream (they are real training steps, as capture requires warmed-up
kernels and allocator), then the step is captured and every later step copies
the fresh batch into static input buffers and replays the graph. A batch whose
shapes differ from the captured ones, or a model that cannot be captured, runs
eagerly; the run records which path it used. A graph replays on the memory it was
captured with, so if an eager step replaced a buffer (a batch norm's running
statistics grow a row per new time step), the graph is captured again before its
next replay rather than updating the old tensors; and a graph is captured only for
shapes the previous, eager step had, so that no buffer grows during a capture
(captured ops do not run: a buffer grown there would hold no values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from suite import diagnostics
from tasks.base import Batch

WARMUP = 3


@dataclass
class StepOut:
    loss: Tensor
    grad_norm: Tensor
    groups: dict[str, Tensor]

    def copy(self) -> "StepOut":
        return StepOut(self.loss.clone(), self.grad_norm.clone(), {k: v.clone() for k, v in self.groups.items()})


class EagerTrainStep:
    """Forward, backward, clip and update on one batch; results stay on the device."""

    path = "eager"
    # Steps whose time is start-up, not steady state (first-use allocation and kernel
    # selection; for the graphed step also the eager warm-up and the capture): the run
    # reports them apart from its throughput.
    warmup_steps = 1

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Batch], Tensor],
                 opt: torch.optim.Optimizer, clip: float, *, bf16: bool = False) -> None:
        self.model, self.loss_fn, self.opt, self.clip, self.bf16 = model, loss_fn, opt, clip, bf16
        self.params = [p for p in model.parameters() if p.requires_grad]

    def compute(self, batch: Batch) -> StepOut:
        device_type = batch.x.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            out = self.model(batch.x, batch.lengths)
            loss = self.loss_fn(out, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        groups = diagnostics.group_norms(self.model)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        return StepOut(loss.detach(), gnorm.detach(), groups)

    def __call__(self, batch: Batch) -> StepOut:
        return self.compute(batch)


class GraphedTrainStep(EagerTrainStep):
    """``EagerTrainStep`` captured in a CUDA graph after ``WARMUP`` eager steps."""

    path = "cuda_graph"
    warmup_steps = WARMUP + 1  # the call after the warm-up captures the graph and replays it once

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.out: StepOut | None = None
        self.failure: str | None = None
        self.side = torch.cuda.Stream()
        self.captures = 0
        self._buffers: list[int] = []
        self._eager_shapes: tuple | None = None  # of the last step that ran eagerly

    def _buffer_ptrs(self) -> list[int]:
        return [b.data_ptr() for b in self.model.buffers()]

    def _shapes(self, batch: Batch) -> tuple:
        return tuple((t.shape, t.dtype) if t is not None else None for t in (batch.x, batch.y, batch.lengths))

    def _capture(self, batch: Batch) -> None:
        self.static = Batch(*(t.clone() if t is not None else None for t in (batch.x, batch.y, batch.lengths)))
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                self.out = self.compute(self.static)
        except Exception as exc:  # an op that cannot be captured: stay eager
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.path = "eager"
            torch.cuda.synchronize()
            return
        self.graph = graph
        self.captures += 1
        self._buffers = self._buffer_ptrs()

    def __call__(self, batch: Batch) -> StepOut:
        self.calls += 1
        if self.failure is not None:
            return self.compute(batch)
        if self.graph is None and (self.calls <= WARMUP or self._shapes(batch) != self._eager_shapes):
            self._eager_shapes = self._shapes(batch)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = self.compute(batch)
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        if self.graph is None:
            self._capture(batch)
            if self.graph is None:
                return self.compute(batch)
        assert self.static is not None and self.out is not None
        if self._shapes(batch) != self._shapes(self.static):
            self._eager_shapes = self._shapes(batch)
            return self.compute(batch)
        if self._buffer_ptrs() != self._buffers:  # an eager step replaced a buffer: capture anew
            self.graph = None
            self._capture(batch)
            if self.graph is None:
                return self.compute(batch)
        for dst, src in zip((self.static.x, self.static.y, self.static.lengths), (batch.x, batch.y, batch.lengths)):
            if dst is not None:
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        # Outputs live in the graph's static buffers: copy them before the next replay.
        return [o.copy() for o in self.out] if isinstance(self.out, list) else self.out.copy()


class StackedTrainStep(EagerTrainStep):
    """One training step of S seeds in a ``SeedStack`` (baselines/stack.py).

    The batch holds the seeds' batches concatenated (seed-major). The loss is the sum
    of the seeds' own losses, so each seed's gradient is the one it gets alone; each
    seed's gradient norm is measured and clipped on its own parameters, as
    ``EagerTrainStep`` does for one model, before one optimizer step over all seeds
    (Adam, RMSprop and SGD update every element on its own). Returns one ``StepOut``
    per seed.
    """

    def __init__(self, stack: nn.Module, *args, **kwargs) -> None:
        super().__init__(stack, *args, **kwargs)
        if self.bf16:
            raise ValueError("stacked seeds train in fp32 or tf32")
        self.seed_params = [[p for p in m.parameters() if p.requires_grad] for m in stack.models]

    def compute(self, batch: Batch) -> list[StepOut]:  # type: ignore[override]
        S = len(self.seed_params)
        outs = self.model.run(list(batch.x.chunk(S)))
        losses = [self.loss_fn(o, Batch(x, y)) for o, x, y in zip(outs, batch.x.chunk(S), batch.y.chunk(S))]
        self.opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        steps = []
        for model, params, loss in zip(self.model.models, self.seed_params, losses):
            groups = diagnostics.group_norms(model)
            steps.append(StepOut(loss.detach(), torch.nn.utils.clip_grad_norm_(params, self.clip).detach(), groups))
        self.opt.step()
        return steps


class GraphedStackedTrainStep(GraphedTrainStep, StackedTrainStep):
    """``StackedTrainStep`` captured in a CUDA graph, as ``GraphedTrainStep``."""


def make_train_step(model: nn.Module, loss_fn: Callable[[Tensor, Batch], Tensor],
                    opt: torch.optim.Optimizer, clip: float, *, device: torch.device,
                    bf16: bool = False, graphs: bool = True) -> EagerTrainStep:
    """The fastest correct training step for this device: graphed on CUDA, else eager;
    for a ``SeedStack``, one step of all its seeds."""
    from baselines.stack import SeedStack

    graphed = graphs and device.type == "cuda"
    if isinstance(model, SeedStack):
        cls: type[EagerTrainStep] = GraphedStackedTrainStep if graphed else StackedTrainStep
    else:
        cls = GraphedTrainStep if graphed else EagerTrainStep
    return cls(model, loss_fn, opt, clip, bf16=bf16)
