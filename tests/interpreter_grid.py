"""Grid-synchronized launches of several programs in Triton's interpreter, for tests.

Triton's interpreter runs a launch's programs one after another, so a barrier that
waits for several programs would never open there. ``install`` runs a cooperative
launch (``launch_cooperative_grid``) with one thread a program instead, and replaces
``scan_triton._step_sync`` with a token: between two barriers each program runs its
stretch of the kernel alone, the programs in an order that a seeded random generator
draws anew at every barrier. So a step that read what another program writes in the
same stretch (a missing barrier, or one whose number is off) gets a result that
depends on the order, and a barrier that some program never reaches is reported as a
deadlock. Every program's barrier numbers are recorded: all must be 1, 2, 3, ... and
the same for every program.

This reaches into the interpreter's internals (Triton 3.x's ``GridExecutor``):
``available`` says whether they are here, and the tests skip where not."""

from __future__ import annotations

import inspect
import random
import threading

import pytest

from baselines import scan_triton

try:
    from triton.runtime import interpreter as _interp
except ImportError:  # pragma: no cover - depends on the installation
    _interp = None

_NEEDED = ("_init_args_hst", "_restore_args_dev")
_here = threading.local()  # the running program's grid index, token and number


def available() -> bool:
    """Whether this Triton's interpreter has the internals ``install`` uses."""
    return (_interp is not None and all(hasattr(_interp.GridExecutor, n) for n in _NEEDED)
            and all(hasattr(_interp, n) for n in ("_patch_lang", "_implicit_cvt", "interpreter_builder")))


class Token:
    """Who runs now: the programs take turns in ``order``, redrawn at every barrier."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, random.Random(seed)
        self.order = self.rng.sample(range(n), n)
        self.pos = self.gen = self.arrived = 0
        self.seen: dict[int, list] = {i: [] for i in range(n)}
        self.error: str | None = None
        self.cv = threading.Condition()

    def _next(self) -> None:
        self.arrived += 1
        if self.arrived == self.n:  # every program at the barrier (or done): the next stretch, a new order
            self.arrived = self.pos = 0
            self.gen += 1
            self.order = self.rng.sample(range(self.n), self.n)
        else:
            self.pos += 1
        self.cv.notify_all()

    def wait(self, me: int, gen: int) -> None:
        ok = self.cv.wait_for(lambda: self.error is not None or (self.gen == gen and self.order[self.pos] == me),
                              timeout=120)
        if not ok:
            self.error = f"deadlock: program {me} waits at barrier generation {gen}, the others at {self.gen}"
        if self.error:
            raise RuntimeError(self.error)

    def barrier(self, me: int, k: int) -> None:
        with self.cv:
            self.seen[me].append(k)
            gen = self.gen
            self._next()
            self.wait(me, gen + 1)

    def finish(self, me: int) -> None:
        with self.cv:
            self.seen[me].append("end")
            self._next()

    def fail(self, e: BaseException) -> None:
        with self.cv:
            self.error = self.error or repr(e)
            self.cv.notify_all()


def install(monkeypatch: pytest.MonkeyPatch, seed: int = 0) -> list[Token]:
    """Cooperative launches as threads (``Token``), grid barriers of up to 1024 programs
    allowed in the interpreter (``scan_triton.INTERPRETER_PROGRAMS``), and no probe of
    the grid launches (they are known to run). Returns the launches' tokens, in order."""
    if not available():
        pytest.skip("this Triton's interpreter lacks the internals that run a grid's programs as threads")
    tokens: list[Token] = []
    run = _interp.GridExecutor.__call__

    def grid_idx(builder):
        return getattr(_here, "grid_idx", None)

    def set_grid_idx(builder, value):
        _here.grid_idx = value

    def call(self, *args_dev, **kwargs):
        if not kwargs.get("launch_cooperative_grid"):
            return run(self, *args_dev, **kwargs)
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        patch = _interp._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {k: v if k in self.constexprs else _interp._implicit_cvt(v) for k, v in args.items()}
            grid = tuple(self.grid(args) if callable(self.grid) else self.grid)
            grid += (1,) * (3 - len(grid))
            _interp.interpreter_builder.set_grid_dim(*grid)
            programs = [(x, y, z) for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            token = Token(len(programs), seed + len(tokens))
            tokens.append(token)
            errors: list[BaseException] = []

            def program(me: int, idx: tuple) -> None:
                _here.me, _here.token = me, token
                try:
                    with token.cv:
                        token.wait(me, 0)
                    _interp.interpreter_builder.set_grid_idx(*idx)
                    self.fn(**args)
                    token.finish(me)
                except BaseException as e:  # noqa: BLE001 - handed to the launching thread
                    errors.append(e)
                    token.fail(e)

            threads = [threading.Thread(target=program, args=(i, idx), daemon=True) for i, idx in enumerate(programs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        finally:
            patch.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    def step_sync(CNT, k, NPROG, GRID, GROUP, POLL):
        if getattr(GRID, "value", GRID):  # a constexpr here; a whole-sequence launch's barrier of its own warps
            k = int(k.handle.data.item()) if hasattr(k, "handle") else int(k)
            idx = _here.grid_idx
            _here.token.barrier(_here.me, k)
            _here.grid_idx = idx

    monkeypatch.setattr(_interp.InterpreterBuilder, "grid_idx", property(grid_idx, set_grid_idx), raising=False)
    monkeypatch.setattr(_interp.GridExecutor, "__call__", call)
    monkeypatch.setattr(scan_triton, "_step_sync", step_sync)
    monkeypatch.setattr(scan_triton, "INTERPRETER_PROGRAMS", 1024)
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda device: True)
    return tokens


def check_barriers(tokens: list[Token]) -> None:
    """Every program of each launch reached barriers 1, 2, 3, ... in order, the same ones,
    then its end."""
    assert tokens
    for token in tokens:
        seqs = {tuple(s) for s in token.seen.values()}
        assert len(seqs) == 1, seqs
        seq = next(iter(seqs))
        assert seq[-1] == "end" and list(seq[:-1]) == list(range(1, len(seq))), seq
