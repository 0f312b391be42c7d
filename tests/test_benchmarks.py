"""Every asv benchmark runs once, in-process, at the tiny shape (asv itself spawns a
process per benchmark, too slow for the test suite; .ci/run also runs `asv check`)."""

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

import baselines


@pytest.fixture(scope="module")
def bm():
    os.environ["RNNBENCH_ASV_SHAPES"] = "tiny"
    sys.modules.pop("benchmarks.benchmarks", None)
    mod = importlib.import_module("benchmarks.benchmarks")
    yield mod
    del os.environ["RNNBENCH_ASV_SHAPES"]
    sys.modules.pop("benchmarks.benchmarks", None)


def test_every_registered_model_is_benchmarked(bm):
    import baselines

    assert bm.TrainStep.params[0] == baselines.names()
    assert bm.Ratio.params[0] == baselines.names()


def test_train_step_benchmarks_run(bm):
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default: the benchmark must time true fp32
    for model in bm.MODELS:
        b = bm.TrainStep()
        b.setup(model, "tiny")
        b.time_train_step(model, "tiny")
        assert b.step.path in ("eager", "cuda_graph")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_ratio_and_learning_tracks(bm):
    r = bm.Ratio().track_time_vs_lstm("gru", "tiny")
    assert r > 0
    assert bm.Ratio().track_time_vs_lstm("lstm", "tiny") == 1.0
    assert bm.StackedRatio().track_time_per_seed_vs_lstm("bn-lstm", "tiny") > 0
    mse = bm.Learning().track_adding_test_mse()
    assert 0 < mse < 10


def test_bench_table():
    from suite.bench import bench, format_table

    rows = bench(["rnn", "lstm-loop"], ["tiny"], "cpu", repeats=2, warmup=1, steps_per_repeat=1)
    assert {r["model"] for r in rows} == {"rnn", "lstm-loop", "lstm"}
    assert all(r["ms"] > 0 and r["ms_min"] <= r["ms"] <= r["ms_max"] for r in rows)
    table = format_table(rows)
    assert "x lstm" in table and "lstm-loop" in table


def test_bench_times_at_the_thread_count_asked_and_restores_it(monkeypatch):
    from suite import bench as bench_mod

    seen: list[tuple] = []
    real = bench_mod._repeat_ms
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    monkeypatch.setattr(bench_mod, "_repeat_ms", lambda *a: seen.append((torch.get_num_threads(), flags()))
                        or real(*a))
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default; bench times true fp32 and puts it back
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    rows = bench_mod.bench(["rnn"], ["tiny"], "cpu", repeats=2, warmup=1, steps_per_repeat=1, threads=target)
    assert seen and set(seen) == {(target, (False, False))}
    assert flags() == (False, True)
    assert [r["threads"] for r in rows] == [target, target]
    capability = torch.backends.cpu.get_cpu_capability()
    assert [r["cpu_capability"] for r in rows] == [capability, capability]
    assert f"torch {torch.__version__}, {target} CPU thread{'s' if target > 1 else ''} ({capability})" in \
        bench_mod.format_table(rows)
    assert torch.get_num_threads() == before
    default = bench_mod.bench(["rnn"], ["tiny"], "cpu", repeats=1, warmup=1, steps_per_repeat=1)
    assert default[0]["threads"] == before


def test_bench_stacks_seeds_where_it_can(monkeypatch):
    from suite import bench as bench_mod
    from suite.bench import bench, format_table

    real = bench_mod._repeat_ms
    monkeypatch.setattr(bench_mod, "_repeat_ms", lambda *a: real(*a) * 0 + 2.0)  # every step 2 ms
    rows = {r["model"]: r for r in bench(["rnn", "bn-lstm"], ["tiny"], "cpu", repeats=2, warmup=1,
                                         steps_per_repeat=1, seeds=3)}
    assert rows["bn-lstm"]["seeds"] == 3 and rows["rnn"]["seeds"] == 1 and rows["lstm"]["seeds"] == 1
    # per seed: three seeds in one step as long as lstm's one
    assert rows["bn-lstm"]["ratio_to_lstm"] == pytest.approx(3.0)
    assert rows["rnn"]["ratio_to_lstm"] == pytest.approx(1.0)
    assert rows["lstm"]["ratio_to_lstm"] == 1.0 and rows["lstm"]["lstm_ms"] == rows["lstm"]["ms"]
    assert "seeds" in format_table(list(rows.values())).splitlines()[0]


def test_cpu_bench_times_the_reference_beside_each_model(monkeypatch):
    """On the CPU each model's repeats alternate with repeats of lstm, and its ratio is
    the median of the paired ratios (a drift cancels in each pair), not the ratio of the
    medians."""
    from suite import bench as bench_mod

    order = []
    real = bench_mod._repeat_ms
    # the gru row's repeats, as they alternate: gru, lstm, gru, lstm, gru, lstm (ms)
    script = [1.0, 1.0, 3.0, 1.0, 2.0, 5.0]

    def scripted(step, batch, device, steps):
        real(step, batch, device, steps)
        order.append(id(step))
        return script[len(order) - 5] if len(order) > 4 else 1.0  # before: lstm alone, 1 + 3 repeats

    monkeypatch.setattr(bench_mod, "_repeat_ms", scripted)
    rows = bench_mod.bench(["gru"], ["tiny"], "cpu", repeats=3, warmup=1, steps_per_repeat=1)
    timed = order[-6:]
    assert len(order) == 10
    assert timed[0::2] == [timed[0]] * 3 and timed[1::2] == [timed[1]] * 3 and timed[0] != timed[1]
    gru = next(r for r in rows if r["model"] == "gru")
    assert (gru["ms"], gru["lstm_ms"]) == (2.0, 1.0)
    assert gru["ratio_to_lstm"] == pytest.approx(1.0)  # median of 1/1, 1/3, 5/2; the medians' ratio is 0.5


def test_step_sweep_defaults_are_the_kernels_defaults():
    """The tuning sweep (benchmarks/step_sweep.py) varies settings around the step
    kernels' defaults and puts them back afterwards: its DEFAULTS must be those."""
    from baselines import scan_triton
    from benchmarks import step_sweep

    assert step_sweep.DEFAULTS == {k: getattr(scan_triton, k) for k in step_sweep.DEFAULTS}
    for variants, cases, under in step_sweep.SWEEPS.values():
        assert all(set(v) <= set(step_sweep.DEFAULTS) for v in [*variants, under])
        assert all(m in baselines.names() for models in cases.values() for m in models)


def test_step_sweep_probe_says_why_a_setting_cannot_run():
    """The sweep's probe runs one eager training step before timing a setting: None where
    it runs, one line naming the failure where it does not (the sweep then skips it)."""
    from baselines import scan_triton
    from benchmarks import step_sweep

    assert step_sweep.check("bn-lstm", "tiny", "cpu") is None
    assert step_sweep.check("no-such-model", "tiny", "cpu").startswith("UserError: unknown model")
    with pytest.MonkeyPatch.context() as mp:  # a failure inside the step, as a kernel that will not compile
        mp.setattr(baselines, "set_fast_path", lambda *a: (_ for _ in ()).throw(RuntimeError("PTX error\nmore")))
        mp.setattr(step_sweep, "set_fast_path", baselines.set_fast_path)
        assert step_sweep.check("rnn-loop", "tiny", "cpu") == "RuntimeError: PTX error"
    assert scan_triton.BJ_WHOLE_BATCH == step_sweep.DEFAULTS["BJ_WHOLE_BATCH"]


@pytest.mark.parametrize("model", ["bn-lstm", "gru-loop"])
def test_step_sweep_probe_refuses_a_setting_with_wrong_gradients(model, monkeypatch):
    """A setting that runs but computes wrong gradients (as a barrier that lets a program
    read a neighbour's h_t too early would) is refused before it is timed: the probe
    compares the fast path's gradients on one batch with the reference loop's."""
    from baselines import cells
    from benchmarks import step_sweep

    real = cells.run_recurrence  # the fast path's recurrence, its outputs 5% off
    monkeypatch.setattr(cells, "run_recurrence", lambda *a, **k: (lambda o: (o[0] * 1.05, *o[1:]))(real(*a, **k)))
    why = step_sweep.check(model, "tiny", "cpu")
    assert why is not None and why.startswith("gradients ") and "off the reference loop's" in why
    monkeypatch.setattr(cells, "run_recurrence", real)
    assert step_sweep.check(model, "tiny", "cpu") is None


def test_step_sweep_times_each_setting_and_puts_the_defaults_back(tmp_path, monkeypatch, capsys):
    """A dry run of the sweep on the CPU at the tiny shape: one row per (setting, model)
    with the setting recorded, a model that cannot run skipped with its reason, and the
    kernels' settings as they were afterwards."""
    import json

    from baselines import scan_triton
    from benchmarks import step_sweep

    monkeypatch.setitem(step_sweep.SWEEPS, "units", ([{}, dict(BJ_WHOLE_BATCH=8)], {"tiny": ["bn-rnn", "rnn-loop"]},
                                                     step_sweep.PER_STEP))
    real = step_sweep.check
    monkeypatch.setattr(step_sweep, "check", lambda m, shape, device: (
        "RuntimeError: no" if m == "rnn-loop" and scan_triton.BJ_WHOLE_BATCH == 8 else real(m, shape, device)))
    out = tmp_path / "units.json"
    step_sweep.main(["--sweep", "units", "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["model"], r["BJ_WHOLE_BATCH"]) for r in rows] == [("bn-rnn", 4), ("rnn-loop", 4), ("bn-rnn", 8)]
    assert all(r["GRID_SYNC"] is False for r in rows)  # the sweep's settings under every variant
    printed = capsys.readouterr().out
    assert "rnn-loop  tiny       skipped: RuntimeError: no" in printed
    assert {k: getattr(scan_triton, k) for k in step_sweep.DEFAULTS} == step_sweep.DEFAULTS
    summary = [ln for ln in printed.splitlines() if ln.startswith("best ")]
    assert [ln.split()[1] for ln in summary] == ["bn-rnn", "rnn-loop"]
    assert "against defaults" in summary[0] and "against defaults" in summary[1]


def test_step_sweep_times_stacked_seeds_one_model_at_a_time(monkeypatch, capsys):
    """A stacked-seeds sweep (``SEEDS``) times each model in its own ``bench`` call with
    the sweep's seeds: a model whose launch the GPU refuses is skipped with one line and
    the others are still timed; cuDNN LSTM's rows are left out."""
    from benchmarks import step_sweep

    calls = []

    def fake_bench(models, shapes, device, repeats, seeds=1):
        calls.append((tuple(models), seeds))
        if models == ["bn-gru"]:
            raise RuntimeError("CUDA error: too many blocks in cooperative launch\nmore")
        return [dict(model="lstm", ms=1.0), dict(model=models[0], ms=2.0, seeds=seeds)]

    monkeypatch.setattr(step_sweep, "bench", fake_bench)
    rows = step_sweep._time("GRID_PER_SM=2", ["bn-lstm", "bn-gru", "bn-rnn"], "seq-mnist", "cuda", 8)
    assert calls == [(("bn-lstm",), 8), (("bn-gru",), 8), (("bn-rnn",), 8)]
    assert [(r["model"], r["seeds"]) for r in rows] == [("bn-lstm", 8), ("bn-rnn", 8)]
    assert "bn-gru    seq-mnist  skipped: RuntimeError: CUDA error: too many blocks" in capsys.readouterr().out
    calls.clear()
    assert [r["model"] for r in step_sweep._time("defaults", ["bn-rnn", "rnn-loop"], "tiny", "cpu", 1)] == \
        ["bn-rnn"]  # one seed: one bench call for all (the fake returns one row)
    assert calls == [(("bn-rnn", "rnn-loop"), 1)]
    assert step_sweep.SEEDS == {"syncstacked": 8} and "syncstacked" in step_sweep.SWEEPS


def test_step_sweep_names_each_models_fastest_setting():
    from benchmarks import step_sweep

    row = lambda setting, ms: dict(model="bn-lstm", shape="seq-mnist", setting=setting, ms=ms,  # noqa: E731
                                   ratio_to_lstm=5.0 / ms)
    lines = step_sweep.best([row("defaults", 40.0), row("BJ_WHOLE_BATCH=4", 20.0), row("BJ_WHOLE_BATCH=8", 30.0)])
    assert lines == ["best bn-lstm   seq-mnist BJ_WHOLE_BATCH=4                     20.00 ms  0.250x against defaults "
                     "40.00 ms (2.00x)"]
    assert "against" not in step_sweep.best([row("BK=16", 20.0)])[0]  # no defaults timed: nothing to compare


@pytest.mark.slow
def test_kernel_resources_reads_a_compiled_kernels_registers():
    """benchmarks/kernel_resources.py compiles the step kernels for sm_90 (no GPU) and
    reads registers, stack and shared memory from the binary: one line per setting."""
    import subprocess

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "benchmarks/kernel_resources.py", "--warps", "8", "--chunks", "16",
                          "--only", "rnn fwd"], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [ln.split() for ln in res.stdout.splitlines()[1:]]
    assert [r[:2] for r in rows] == [["sequence", "rnn"]]
    regs, stack, smem = map(int, rows[0][-3:])
    assert 0 < regs <= 255 and stack >= 0 and smem > 0


def sweep_rows(setting: str, times: dict[tuple[str, str], float], **change) -> list[dict]:
    """Rows as ``step_sweep.main`` writes them: the setting's label, every setting's value."""
    from benchmarks import step_sweep

    return [dict(model=m, shape=s, ms=ms, setting=setting, **{**step_sweep.DEFAULTS, **change})
            for (m, s), ms in times.items()]


def test_step_sweep_picks_the_fastest_setting_over_all_models():
    """From each sweep, the setting with the lowest geometric mean time relative to the
    defaults, over every (model, shape) they were timed on; one that beats them on one
    model only by losing more on another, one that missed a model, and one within the
    noise margin are not taken; ``keep`` holds a setting at its default."""
    from benchmarks import step_sweep

    both = {("bn-lstm", "seq-mnist"): 40.0, ("bn-gru", "seq-mnist"): 20.0}
    units = (sweep_rows("defaults", both)
             + sweep_rows("BJ_WHOLE_BATCH=8", {("bn-lstm", "seq-mnist"): 30.0, ("bn-gru", "seq-mnist"): 30.0},
                          BJ_WHOLE_BATCH=8)  # geometric mean sqrt(0.75 * 1.5) > 1
             + sweep_rows("BJ_WHOLE_BATCH=16", {("bn-lstm", "seq-mnist"): 1.0}, BJ_WHOLE_BATCH=16)  # one model only
             + sweep_rows("BJ_WHOLE_BATCH=16 BK_WHOLE_BATCH=32", {("bn-lstm", "seq-mnist"): 36.0,
                                                                 ("bn-gru", "seq-mnist"): 18.0},
                          BJ_WHOLE_BATCH=16, BK_WHOLE_BATCH=32))  # 0.9 on both
    assert step_sweep.pick([units]) == dict(BJ_WHOLE_BATCH=16, BK_WHOLE_BATCH=32)
    assert step_sweep.pick([units], keep=("BK_WHOLE_BATCH",)) == dict(BJ_WHOLE_BATCH=16)
    one = {("lstm-loop", "seq-mnist"): 20.0}
    seq = sweep_rows("defaults", one) + sweep_rows("SEQUENCE=True", {k: 10.0 for k in one}, SEQUENCE=True)
    noise = sweep_rows("defaults", one) + sweep_rows("BK=32", {k: 19.6 for k in one}, BK=32)  # 2%: within the margin
    assert step_sweep.pick([units, seq, noise]) == dict(BJ_WHOLE_BATCH=16, BK_WHOLE_BATCH=32, SEQUENCE=True)
    assert step_sweep.pick([sweep_rows("BK=32", one, BK=32)]) == {}  # no defaults timed: nothing to compare
    # Rows written under other defaults (BJ=16 in both) and without a later setting: the
    # change is what the sweep varied, against its own defaults row.
    old = {k: v for k, v in step_sweep.DEFAULTS.items() if k != "BK_WHOLE_BATCH"}
    older = [{**r, **old, "BJ": 16} for r in sweep_rows("defaults", one)]
    older += [{**r, **old, "BJ": 16, "BK": 32} for r in sweep_rows("BK=32", {k: 10.0 for k in one})]
    for r in older:
        r.pop("BK_WHOLE_BATCH", None)
    assert step_sweep.pick([older]) == dict(BK=32)


def test_step_sweep_runs_bench_under_the_picked_settings(tmp_path, monkeypatch, capsys):
    """``--pick``: the settings from the sweeps' files (an unreadable file named and
    skipped) are in force while ``rnnbench bench`` runs with the arguments after ``--``,
    and the settings as they were before are back afterwards; an unknown ``--keep`` is
    one line, exit 2."""
    import json

    import suite.cli
    from baselines import scan_triton
    from benchmarks import step_sweep

    f = tmp_path / "units.json"
    f.write_text(json.dumps(sweep_rows("defaults", {("bn-rnn", "tiny"): 2.0})
                            + sweep_rows("BJ_WHOLE_BATCH=16", {("bn-rnn", "tiny"): 1.0}, BJ_WHOLE_BATCH=16)))
    monkeypatch.setattr(scan_triton, "BJ_WHOLE_BATCH", 8)  # as set before: put back afterwards
    seen = []
    real = suite.cli.main
    monkeypatch.setattr(suite.cli, "main", lambda argv: seen.append(scan_triton.BJ_WHOLE_BATCH) or real(argv))
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as done:
        step_sweep.main(["--pick", str(f), str(tmp_path / "missing.json"), "--", "--device", "cpu", "--shapes",
                         "tiny", "--models", "bn-rnn", "--repeats", "1", "--json", str(out)])
    assert done.value.code == 0 and seen == [16]
    printed = capsys.readouterr().out
    assert "missing.json skipped (FileNotFoundError" in printed and "picked: BJ_WHOLE_BATCH=16" in printed
    assert [r["model"] for r in json.loads(out.read_text())] == ["lstm", "bn-rnn"]
    assert scan_triton.BJ_WHOLE_BATCH == 8
    with pytest.raises(SystemExit) as done:
        step_sweep.main(["--pick", str(f), "--keep", "NOPE", "--", "--device", "cpu"])
    assert done.value.code == 2 and "unknown setting 'NOPE' in --keep" in capsys.readouterr().err


def test_cpu_ab_switches_the_projection_and_puts_it_back(monkeypatch, capsys):
    """benchmarks/ab_cpu.py times both settings of a switch and restores the hooks: with
    the projection off, lstm-loop projects batch-major first (``cells.project``) and
    bn-lstm's loops take the bare projection; on, neither."""
    import torch

    import baselines
    from baselines import cells, normalized, scan
    from benchmarks import ab_cpu

    hooks = cells.LoopCore.loop_input_term, normalized.NormLoopCore.loop_input_term, scan.PROJECT_INPUTS
    seen: list[str] = []
    real = cells.project
    monkeypatch.setattr(cells, "project", lambda *a: seen.append("plain") or real(*a))
    monkeypatch.setattr(normalized, "project", lambda *a: seen.append("bn") or real(*a))
    x = torch.randn(4, 5, 2)
    for on in (False, True):
        seen.clear()
        with ab_cpu._projection(on):
            for name in ("lstm-loop", "bn-lstm"):
                baselines.create(name, input_size=2, output_size=1, hidden_size=8)(x)
        assert seen == ([] if on else ["plain", "bn"])
    assert (cells.LoopCore.loop_input_term, normalized.NormLoopCore.loop_input_term, scan.PROJECT_INPUTS) == hooks
    rows = ab_cpu.run("projection", ["lstm-loop"], "tiny", reps=1, steps=1)
    assert [r["setting"] for r in rows] == list(ab_cpu.SWITCHES["projection"]) and rows[0]["vs_first"] == 1.0
    assert all(r["ms"] > 0 for r in rows) and "vs first" in capsys.readouterr().out


def test_kernel_ab_times_this_tree_the_other_source_and_this_tree_again(tmp_path, monkeypatch, capsys):
    """benchmarks/ab_kernels.py: the other source loads as a module of its own (a copy of
    the kernels here, which finds itself), the scan path calls it only inside its run and
    this tree's kernels before and after; a file that cannot load is one line."""
    import json
    import shutil

    from baselines import scan, scan_triton
    from benchmarks import ab_kernels

    other = tmp_path / "scan_triton_before.py"
    shutil.copy(scan_triton.__file__, other)
    seen = []

    def fake_bench(models, shapes, device, repeats):
        seen.append(scan.scan_triton)
        return [dict(model=m, shape=s, ms=2.0, ratio_to_lstm=0.5, path="scan-triton") for s in shapes for m in models]

    monkeypatch.setattr(ab_kernels, "bench", fake_bench)
    out = tmp_path / "ab.json"
    ab_kernels.main(["--other", str(other), "--models", "bn-lstm", "--shapes", "seq-mnist,adding", "--json", str(out)])
    assert seen[0] is scan_triton and seen[2] is scan_triton and scan.scan_triton is scan_triton
    assert seen[1] is not scan_triton and seen[1].__file__ == str(other) and seen[1]._this() is seen[1]
    rows = json.loads(out.read_text())
    assert [(r["kernels"], r["shape"]) for r in rows] == [
        (k, s) for k in ("this", "other", "this (again)") for s in ("seq-mnist", "adding")]
    assert "other         bn-lstm   adding        2.00 ms  0.500x" in capsys.readouterr().out
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    with pytest.raises(SystemExit, match=r"ab_kernels: cannot load --other .*broken.py: SyntaxError"):
        ab_kernels.main(["--other", str(broken)])
    for bad in (["--models", "bn-lsmt"], ["--shapes", "seq-mnist,addding"]):
        with pytest.raises(SystemExit, match=r"ab_kernels: unknown shape or model '(bn-lsmt|addding)'; shapes: seq-mnist"):
            ab_kernels.main(["--other", str(other), *bad])


def test_step_sweep_checks_gradients_on_the_first_steps_of_the_batch():
    """``check`` compares gradients on a batch's first CHECK_STEPS steps: inputs cut,
    every-step targets and lengths with them, one target a row kept."""
    import torch

    from benchmarks import step_sweep
    from suite.bench import SHAPES, make_batch

    every = make_batch(SHAPES["char-lm"], torch.device("cpu"))
    head = step_sweep._head(every, 7)
    assert head.x.shape == (every.x.shape[0], 7) and head.y.shape == (every.y.shape[0], 7)
    assert torch.equal(head.y, every.y[:, :7])
    last = make_batch(SHAPES["adding"], torch.device("cpu"))
    head = step_sweep._head(last, 7)
    assert head.x.shape[1] == 7 and torch.equal(head.y, last.y) and head.lengths is None
    padded = step_sweep._head(type(every)(every.x, every.y, torch.tensor([3, 9] * (every.x.shape[0] // 2))), 7)
    assert padded.lengths.tolist()[:2] == [3, 7]


def test_step_sweep_check_compares_the_head_of_the_batch(monkeypatch):
    """``check`` takes its gradients on ``_head(batch, CHECK_STEPS)``."""
    from benchmarks import step_sweep

    seen = []
    real = step_sweep._head
    monkeypatch.setattr(step_sweep, "_head", lambda batch, steps: seen.append(steps) or real(batch, steps))
    assert step_sweep.check("rnn-loop", "tiny", "cpu") is None
    assert seen == [step_sweep.CHECK_STEPS]
