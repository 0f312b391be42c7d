"""A/B of one switch of the CPU fast path, in one process, variants interleaved.

This 2-core machine's speed drifts by 30% or more between minutes, so two `rnnbench
bench` runs do not compare. Here each model's training step (``suite.bench.build_step``)
runs under both settings of a switch, alternating, beside nn.LSTM (``lstm``), and the
20th percentile of each is printed with its ratio to the first setting::

    python benchmarks/ab_cpu.py --switch projection --models bn-lstm,lstm-loop --reps 60

Switches:

- ``projection``: the recurrence computes its input term itself (the batch-norm cells'
  loops where x has at most ``scan.PROJECT_INPUTS`` features; the cells with no input
  norm as ``scan.InputProjection``), or the projection runs first, batch-major (off).
- ``isa``: the compiled loops built for AVX2 only, or for PyTorch's CPU capability
  (AVX-512 where it has it); builds a second copy of the loops (~40 s, once).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch

from baselines import cells, normalized, scan, scan_cpp
from suite.bench import SHAPES, build_step, make_batch


@contextlib.contextmanager
def _projection(on: bool) -> Iterator[None]:
    if on:
        yield
        return
    plain, norm, inputs = cells.LoopCore.loop_input_term, normalized.NormLoopCore.loop_input_term, scan.PROJECT_INPUTS

    def unprojected(self, layer, seq, mask):
        return None if self.norm_ih is None else norm(self, layer, seq, mask)

    cells.LoopCore.loop_input_term = lambda self, layer, seq, mask: None
    normalized.NormLoopCore.loop_input_term = unprojected
    scan.PROJECT_INPUTS = 0
    try:
        yield
    finally:
        cells.LoopCore.loop_input_term, normalized.NormLoopCore.loop_input_term = plain, norm
        scan.PROJECT_INPUTS = inputs


def _isa_switch() -> Callable[[bool], contextlib.AbstractContextManager]:
    from torch.utils.cpp_extension import load

    name, flags, ldflags = scan_cpp._flags(True)
    avx2 = load(name + "_ab_avx2", [str(scan_cpp.SOURCE)], extra_cflags=[f for f in flags if "avx512" not in f],
                extra_ldflags=ldflags, verbose=False)
    native = scan_cpp.load()

    @contextlib.contextmanager
    def use(on: bool) -> Iterator[None]:
        before = scan_cpp._module
        scan_cpp._module = native if on else avx2
        try:
            yield
        finally:
            scan_cpp._module = before

    return use


SWITCHES = {"projection": ("batch-major projection first", "input term in the recurrence"),
            "isa": ("loops built for AVX2", "loops built for PyTorch's capability")}


def run(switch: str, models: list[str], shape_name: str = "small", reps: int = 60, steps: int = 3) -> list[dict]:
    """One row per (model, setting): p20 ms of ``steps`` training steps per sample, and the
    ratio to the switch's first setting."""
    use = _isa_switch() if switch == "isa" else _projection
    shape, dev = SHAPES[shape_name], torch.device("cpu")
    batch = make_batch(shape, dev)
    ref = build_step("lstm", shape, dev)
    built = {m: build_step(m, shape, dev) for m in models}
    samples: dict[tuple[str, bool], list[float]] = {(m, on): [] for m in models for on in (False, True)}
    lstm: list[float] = []

    def ms(step) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(batch)
        return (time.perf_counter() - t0) / steps * 1e3

    for rep in range(reps + 2):  # two rounds of warm-up
        lstm.append(ms(ref))
        for m, step in built.items():
            for on in (False, True):
                with use(on):
                    samples[(m, on)].append(ms(step))
    p20 = lambda xs: sorted(xs[2:])[len(xs[2:]) // 5]  # noqa: E731
    rows = []
    for m in models:
        first = p20(samples[(m, False)])
        for on in (False, True):
            x = p20(samples[(m, on)])
            rows.append({"model": m, "setting": SWITCHES[switch][on], "ms": x, "vs_first": x / first,
                         "ratio_to_lstm": p20(lstm) / x})
    print(f"lstm (nn.LSTM) p20 {p20(lstm):.2f} ms; {torch.get_num_threads()} threads, {shape_name} shape, "
          f"{reps} samples of {steps} steps")
    for r in rows:
        print(f"{r['model']:<12}{r['setting']:<40}{r['ms']:8.3f} ms  x lstm {r['ratio_to_lstm']:.3f}  "
              f"vs first {r['vs_first']:.3f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", choices=sorted(SWITCHES), required=True)
    p.add_argument("--models", default="bn-lstm,lstm-loop")
    p.add_argument("--shape", default="small", choices=sorted(SHAPES))
    p.add_argument("--reps", type=int, default=60)
    a = p.parse_args(argv)
    run(a.switch, a.models.split(","), a.shape, a.reps)


if __name__ == "__main__":
    main()
