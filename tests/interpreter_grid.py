"""Grid-synchronized launches of several programs in Triton's interpreter, for tests.

Triton's interpreter runs a launch's programs one after another, so a barrier that
waits for several programs would never open there. ``install`` runs a cooperative
launch (``launch_cooperative_grid``) with one thread a program instead, and replaces
``scan_triton._step_sync`` with a token (``Token``): one program runs at a time, and
whenever it reaches a barrier or its end a seeded random generator draws the next from
those free to run, a program at a barrier being free once every program that counts on
its barrier's counter has arrived (the launch's, its row block's or its unit block's:
``GROUP``). So a step that read what another program writes in the same stretch (a
missing barrier, one whose number is off, or a group too small for what it exchanges)
gets a result that depends on the order, a barrier that counts the wrong number of
programs is an error, and one that some program never reaches is reported as a
deadlock. Every program's barriers are recorded, each as its kind and number: those of
a kind must be numbered 1, 2, 3, ..., and every program's the same.

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
    """Who runs now: one program at a time, the next drawn at random (seeded) from those
    that can run whenever the running one reaches a barrier or its end. A program waiting
    at its group's k-th barrier can run again once the group's programs have arrived k
    times in all (the GPU's counter reaching k NPROG): its group every program of the
    launch (GROUP 0), those that share its row block and seed (1: grid axes 1 and 2), or
    its unit block and seed (2: axes 0 and 2; ``scan_triton._counter``). So groups drift
    apart as far as their barriers let them."""

    def __init__(self, grid: list[tuple[int, int, int]], seed: int) -> None:
        self.grid, self.n, self.rng = grid, len(grid), random.Random(seed)
        self.seen: dict[int, list] = {i: [] for i in range(self.n)}
        self.arrivals: dict[tuple, int] = {}  # a counter's arrivals, by its key
        self.waiting: dict[int, tuple[tuple, int]] = {}  # a program at a barrier: its counter's key, k
        self.size: dict[tuple, int] = {}
        self.done: set[int] = set()
        self.error: str | None = None
        self.cv = threading.Condition()
        self.now: int | None = self.rng.randrange(self.n)

    def key(self, me: int, group: int) -> tuple:
        """The counter of program me's barrier of ``group``'s kind (its programs counted in
        ``size``)."""
        def of(g: tuple[int, int, int]) -> tuple:
            return ("launch",) if group == 0 else ("row",) + g[1:] if group == 1 else ("column", g[0], g[2])

        key = of(self.grid[me])
        if key not in self.size:
            self.size[key] = sum(1 for g in self.grid if of(g) == key)
        return key

    def _next(self) -> None:
        free = [p for p in range(self.n) if p not in self.done
                and (p not in self.waiting
                     or self.arrivals[self.waiting[p][0]] >= self.waiting[p][1] * self.size[self.waiting[p][0]])]
        if free:
            self.now = self.rng.choice(free)
            self.waiting.pop(self.now, None)
        elif len(self.done) < self.n:
            self.error = self.error or (f"deadlock: programs {sorted(self.waiting)} wait at barriers "
                                        f"{sorted(set(k for _, k in self.waiting.values()))}")
        self.cv.notify_all()

    def wait(self, me: int) -> None:
        ok = self.cv.wait_for(lambda: self.error is not None or self.now == me, timeout=120)
        if not ok:
            self.error = f"deadlock: program {me} never ran again"
        if self.error:
            raise RuntimeError(self.error)

    def barrier(self, me: int, k: int, nprog: int, group: int) -> None:
        with self.cv:
            key = self.key(me, group)
            if nprog != self.size[key]:
                self.error = self.error or f"a barrier counts {nprog} programs where {self.size[key]} count on it"
                self.cv.notify_all()
                raise RuntimeError(self.error)
            self.seen[me].append((group, k))
            self.arrivals[key] = self.arrivals.get(key, 0) + 1
            self.waiting[me] = (key, k)
            self._next()
            self.wait(me)

    def finish(self, me: int) -> None:
        with self.cv:
            self.seen[me].append("end")
            self.done.add(me)
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
            token = Token(programs, seed + len(tokens))
            tokens.append(token)
            errors: list[BaseException] = []

            def program(me: int, idx: tuple) -> None:
                _here.me, _here.token = me, token
                try:
                    with token.cv:
                        token.wait(me)
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
            k, nprog = (int(v.handle.data.item()) if hasattr(v, "handle") else int(v) for v in (k, NPROG))
            idx = _here.grid_idx
            _here.token.barrier(_here.me, k, nprog, int(getattr(GROUP, "value", GROUP)))
            _here.grid_idx = idx

    monkeypatch.setattr(_interp.InterpreterBuilder, "grid_idx", property(grid_idx, set_grid_idx), raising=False)
    monkeypatch.setattr(_interp.GridExecutor, "__call__", call)
    monkeypatch.setattr(scan_triton, "_step_sync", step_sync)
    monkeypatch.setattr(scan_triton, "INTERPRETER_PROGRAMS", 1024)
    monkeypatch.setattr(scan_triton, "_grid_runs_here", lambda device: True)
    return tokens


def check_barriers(tokens: list[Token]) -> None:
    """Every program of each launch reached the same barriers, then its end: of each kind
    (``Token.key``) numbered 1, 2, 3, ... in order."""
    assert tokens
    for token in tokens:
        seqs = {tuple(s) for s in token.seen.values()}
        assert len(seqs) == 1, seqs
        seq = next(iter(seqs))
        assert seq[-1] == "end", seq
        for kind in {g for g, _ in seq[:-1]}:
            ks = [k for g, k in seq[:-1] if g == kind]
            assert ks == list(range(1, len(ks) + 1)), (kind, seq)
