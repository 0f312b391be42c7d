"""CUDA paths: the graphed training step equals the eager one; cuDNN and loop cells
agree on the GPU; the runner uses and records the fast path. Run with -m gpu."""

import pytest
import torch

import baselines
from suite import bench
from suite.fastpath import EagerTrainStep, GraphedTrainStep

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

DEV = torch.device("cuda")
# fused tiles 64 x 64 for every cell: compiled once, shared with the fused tests
bench.SHAPES["graph-test"] = bench.Shape("graph-test", 20, 64, 64, 2, None, 1, "last")


def _train(model_name, graphed, steps=8, shape="graph-test"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sh = bench.SHAPES[shape]
    torch.manual_seed(0)
    model = baselines.create(model_name, output_size=sh.output_size, input_size=sh.input_size,
                             vocab_size=sh.vocab, target=sh.target, hidden_size=sh.H).to(DEV)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    cls = GraphedTrainStep if graphed else EagerTrainStep
    step = cls(model, bench.loss_for(sh), opt, 1.0)
    losses = []
    for i in range(steps):
        out = step(bench.make_batch(sh, DEV, seed=i))
        losses.append(out.loss.item())
    return losses, model, step


@pytest.mark.parametrize("name", baselines.names())
def test_graphed_step_equals_eager(name):
    eager_losses, eager_model, _ = _train(name, graphed=False)
    graph_losses, graph_model, step = _train(name, graphed=True)
    assert step.path == "cuda_graph", step.failure
    torch.testing.assert_close(torch.tensor(graph_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-6)
    for (k, a), (_, b) in zip(eager_model.state_dict().items(), graph_model.state_dict().items()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_cudnn_equals_loop_on_gpu(name):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    a = baselines.create(name, input_size=3, output_size=2, hidden_size=32).to(DEV)
    b = baselines.create(f"{name}-loop", input_size=3, output_size=2, hidden_size=32).to(DEV)
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 50, 3, device=DEV)
    torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)


def test_runner_uses_and_records_fast_path():
    from baselines import scan_triton
    from suite.profiles import build_specs
    from suite.runner import train_one

    (spec,) = build_specs(task=["adding"], model=["lstm-loop"], task_args={"T": 20, "n_val": 100, "n_test": 100},
                          model_args={"hidden_size": 16}, train={"max_steps": 20, "eval_every": 10},
                          seeds="0", device="cuda")
    res = train_one(spec)
    steps = "scan-triton-grid" if scan_triton.GRID_SYNC else "scan-triton"  # all steps in one launch, or one each
    assert res.status == "done" and res.summary["path"] == f"cuda_graph/{steps}"
    assert res.summary["peak_mem_mb"] > 0 and res.env["device_name"]


# One tile size per cell family (each new size is a compile of a few seconds):
# the RNN family at the benchmark shapes' 128 x 128 tile, gated cells at 64 x 64.
RNN_FAMILY = ["rnn-loop", "irnn-loop", "bn-rnn", "bn-rnn-input", "ln-rnn"]
GATED = ["lstm-loop", "bn-lstm", "ln-lstm", "gru-loop", "bn-gru", "ln-gru"]


@pytest.mark.parametrize("path,name,B,T,H", [("fused", n, 100, 30, 100) for n in RNN_FAMILY]
                         + [("fused", n, 64, 20, 50) for n in GATED] + [("fused", "bn-rnn", 128, 20, 128)]
                         + [("scan-triton", n, 100, 30, 100) for n in RNN_FAMILY + GATED]
                         + [("scan-triton", n, 128, 25, 128) for n in ("bn-lstm", "gru-loop")]
                         + [("scan-triton-seq", n, 100, 30, 100) for n in ("rnn-loop", "bn-rnn-input", "lstm-loop",
                                                                          "gru-loop", "bn-lstm", "bn-gru", "ln-rnn",
                                                                          "ln-lstm", "ln-gru")]
                         + [("scan-triton-seq", n, 128, 25, 128) for n in ("lstm-loop", "irnn-loop")]
                         + [("scan-triton-grid", n, 100, 30, 100) for n in ("rnn-loop", "bn-rnn", "lstm-loop", "bn-lstm",
                                                                           "gru-loop", "bn-gru")]
                         + [("scan-triton-grid", n, 128, 25, 128) for n in ("lstm-loop", "gru-loop")]  # chunks of 32
                         # batch norm with the rows split (scan_triton.BN_SPLIT): 91 and 128 programs
                         + [("scan-triton-grid+bn-rows", n, 100, 30, 100) for n in ("bn-rnn", "bn-lstm", "bn-gru")]
                         + [("scan-triton-grid+bn-rows", n, 128, 25, 128) for n in ("bn-lstm", "bn-gru")]
                         # layer norm with the rows split (scan_triton.LN_SPLIT): in place of whole sequences
                         + [("scan-triton-grid+ln-rows", n, 100, 30, 100) for n in ("ln-rnn", "ln-lstm", "ln-gru")]
                         + [("scan", n, 100, 30, 100) for n in ("rnn-loop", "bn-lstm", "bn-gru")])
def test_fast_path_equals_reference_loop_on_gpu(path, name, B, T, H, monkeypatch):
    """The scan path (its CUDA step kernels, their whole-sequence and grid-synchronized
    launches, and its Python loops) and the compiled Triton kernels (not the interpreter)
    on CUDA. Layer norm runs in whole-sequence launches always; batch statistics keep a
    launch per step in training (and run whole sequences in evaluation, with population
    statistics); grid-synchronized launches run both, 25 to 91 programs here (128 with
    batch norm's rows split, "+bn-rows"; layer norm's, "+ln-rows", runs there too)."""
    from baselines import fused, scan_triton

    rows = path.endswith("-rows")
    monkeypatch.setattr(scan_triton, "BN_SPLIT", path.endswith("+bn-rows"))
    monkeypatch.setattr(scan_triton, "LN_SPLIT", path.endswith("+ln-rows"))
    path = path.removesuffix("+bn-rows").removesuffix("+ln-rows")
    split = []  # with "+bn-rows" or "+ln-rows": whether each training launch split the rows (scan_triton_rows)
    if rows:
        if not scan_triton._grid_plan(T, B, H, 1, (3, 3) if name.startswith("ln-") else (1, 1), DEV)[1]:
            pytest.skip(f"the rows-split programs of B={B}, H={H} do not fit this GPU at once")
        start = scan_triton._start

        def recording(*args, **kwargs):
            out = start(*args, **kwargs)
            if args[1] == B:  # this test's launches (_start(T, B, ...)), not a probe's of one row
                split.append("PART" in out[3])
            return out

        monkeypatch.setattr(scan_triton, "_start", recording)
    monkeypatch.setenv(scan_triton.ENV, "0" if path == "scan" else "1")
    monkeypatch.setattr(scan_triton, "SEQUENCE", path == "scan-triton-seq")
    monkeypatch.setattr(scan_triton, "GRID_SYNC", path == "scan-triton-grid")
    eval_path = path
    if path == "scan-triton" and name.startswith("ln-"):
        path = eval_path = "scan-triton-seq"
    if path == "scan-triton-seq" and name in ("bn-lstm", "bn-gru"):
        path = "scan-triton"
    monkeypatch.setattr(fused, "ENABLED", path == "fused")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=2, output_size=3, hidden_size=H).to(DEV)
    fast = baselines.create(name, input_size=2, output_size=3, hidden_size=H).to(DEV)
    fast.load_state_dict(ref.state_dict())
    baselines.set_fast_path(ref, False)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp(min=1e-12)).item()  # noqa: E731
    for step in range(3):
        x = torch.rand(B, T, 2, device=DEV)
        ya, yb = ref(x), fast(x)
        assert baselines.recurrence_path(fast) == path and baselines.recurrence_path(ref) == "loop"
        assert torch.isfinite(yb).all() and rel(yb, ya) < 1e-4
        ga = torch.autograd.grad(ya.square().sum(), list(ref.parameters()))
        gb = torch.autograd.grad(yb.square().sum(), list(fast.parameters()))
        for (n, _), a, b in zip(ref.named_parameters(), ga, gb):
            assert rel(b, a) < 1e-3, (n, rel(b, a))
    for (n, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        assert rel(b, a) < 1e-4, n
    assert all(split) and bool(split) == rows  # every training launch, forward and backward
    ref.eval(), fast.eval()
    x = torch.rand(B, T + 7, 2, device=DEV)
    assert rel(fast(x), ref(x)) < 1e-4
    if eval_path == "scan-triton-seq":  # population statistics, layer norm, none: whole sequences
        assert baselines.recurrence_path(fast) == eval_path


def test_fused_kernel_writes_every_output():
    from baselines import fused

    torch.manual_seed(0)
    B, T, H = 100, 30, 100
    u, h0 = torch.randn(B, T, H, device=DEV), torch.randn(B, H, device=DEV)
    w, g = torch.randn(H, H, device=DEV) / 10, torch.ones(H, device=DEV)
    h, mean, var = fused.fused_rnn(u, h0, w, g, norm="batch")
    torch.cuda.synchronize()
    assert torch.isfinite(h).all() and torch.isfinite(mean).all() and (var >= 0).all()
    h2, _, _ = fused.fused_rnn(u, h0, w, g, norm="batch")  # same inputs, same result: no race
    assert torch.equal(h, h2)


def test_graph_is_captured_anew_when_an_eager_step_replaces_a_buffer():
    """A longer batch runs eagerly and grows the batch norms' running statistics (new
    tensors); the next replay must update those, not the tensors captured before."""
    import dataclasses

    from baselines.norm import SeqNorm
    from suite.fastpath import WARMUP

    sh = bench.SHAPES["graph-test"]
    torch.manual_seed(0)
    model = baselines.create("bn-rnn", output_size=sh.output_size, input_size=sh.input_size,
                             hidden_size=sh.H).to(DEV)
    step = GraphedTrainStep(model, bench.loss_for(sh), torch.optim.Adam(model.parameters(), capturable=True), 1.0)
    for i in range(WARMUP + 2):
        step(bench.make_batch(sh, DEV, seed=i))
    assert step.captures == 1
    step(bench.make_batch(dataclasses.replace(sh, T=sh.T + 5), DEV, seed=50))
    norm = next(m for m in model.modules() if isinstance(m, SeqNorm) and m.kind == "batch")
    assert norm.running_mean.shape[0] == sh.T + 5
    before = norm.running_mean.clone()
    step(bench.make_batch(sh, DEV, seed=51))
    assert step.captures == 2 and step.path == "cuda_graph"
    assert not torch.equal(norm.running_mean[:sh.T], before[:sh.T])


@pytest.mark.parametrize("steps,grid", [("1", True), ("1", False), ("0", False)])
@pytest.mark.parametrize("name", ["bn-lstm", "ln-gru", "bn-rnn"])
def test_stacked_seeds_graphed_equal_alone_on_gpu(name, steps, grid, monkeypatch):
    """Three seeds stacked in one CUDA-graphed step end where each seed trained alone
    (eager) ends: losses and weights after 8 Adam steps; with the step kernels on both
    sides (grid-synchronized launches, which three seeds' programs fit, or a launch per
    step, which more seeds take), and with the Python loops on both (Adam turns the
    rounding differences of two implementations into weight differences of the order of
    its step size)."""
    from baselines import scan_triton
    from baselines.stack import SeedStack
    from suite.fastpath import GraphedStackedTrainStep

    monkeypatch.setenv(scan_triton.ENV, steps)
    monkeypatch.setattr(scan_triton, "GRID_SYNC", grid)

    torch.backends.cuda.matmul.allow_tf32 = False
    sh = bench.SHAPES["graph-test"]

    def model(seed):
        torch.manual_seed(seed)
        return baselines.create(name, output_size=sh.output_size, input_size=sh.input_size,
                                hidden_size=sh.H).to(DEV)

    alone = [model(s) for s in range(3)]
    stack = SeedStack([model(s) for s in range(3)])
    steps = [EagerTrainStep(m, bench.loss_for(sh), torch.optim.Adam(m.parameters(), lr=1e-3), 1.0) for m in alone]
    stacked = GraphedStackedTrainStep(stack, bench.loss_for(sh),
                                      torch.optim.Adam(stack.parameters(), lr=1e-3, capturable=True), 1.0)
    for i in range(8):
        batch = bench.make_batch(sh, DEV, seed=10 * i, seeds=3)
        got = stacked(batch)
        want = [s(b) for s, b in zip(steps, [bench.make_batch(sh, DEV, seed=10 * i + k) for k in range(3)])]
        for g, w in zip(got, want):
            torch.testing.assert_close(g.loss, w.loss, rtol=1e-4, atol=1e-6)
    assert stacked.path == "cuda_graph", stacked.failure
    for a, b in zip(alone, stack.models):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.parametrize("norm,seq", [(0, False), (1, False), (2, False), (0, True), (2, True), (3, True),
                                      (0, "grid"), (1, "grid"), (2, "grid"), (0, "one counter"),
                                      (1, "one counter"), (0, "one counter, every thread polls"),
                                      (1, "grid, bn rows"), (3, "grid, ln rows")])
def test_step_kernels_write_every_output_and_repeat_exactly(norm, seq, monkeypatch):
    """The LSTM step kernels on CUDA (``seq``: their whole-sequence launches, or "grid":
    grid-synchronized ones, 25 to 91 programs; "one counter": with the barrier of every
    program, one thread polling or every thread; "bn rows", "ln rows": batch or layer
    norm with the rows split, 91 programs exchanging statistics) with every output buffer poisoned
    (NaN) beforehand: all of it is written, and a second run gives the same bits (no
    race between programs, nor between a program's warps)."""
    from baselines import scan_triton as st

    monkeypatch.setattr(st, "SEQUENCE", seq is True)
    monkeypatch.setattr(st, "GRID_SYNC", seq not in (True, False))
    monkeypatch.setattr(st, "BN_SPLIT", seq == "grid, bn rows")
    monkeypatch.setattr(st, "LN_SPLIT", seq == "grid, ln rows")
    if seq not in (True, False, "grid", "grid, bn rows", "grid, ln rows"):
        monkeypatch.setattr(st, "GRID_GROUPS", False)
        monkeypatch.setattr(st, "GRID_POLL", seq != "one counter")

    torch.manual_seed(0)
    B, T, H = 100, 12, 100
    nan = lambda *s: torch.full(s, float("nan"), device=DEV)  # noqa: E731

    def norm_of(F):
        g = torch.rand(F, device=DEV) + 0.5
        if norm == 3:  # layer norm: a mean and 1/std per row and step
            return st.Norm(3, g, torch.randn(F, device=DEV), None, None, nan(T, B, 1), nan(T, B, 1), None, 1e-5)
        if norm == 2:
            return st.Norm(2, g, None, torch.rand(T, F, device=DEV) + 0.5, torch.randn(T, F, device=DEV), None, None,
                           None, 1e-5)
        return st.Norm(norm, g, torch.randn(F, device=DEV) if norm else None, None, None, nan(T, F), nan(T, F),
                       nan(T, F), 1e-5)

    def run():
        torch.manual_seed(1)
        u, h0, c0 = torch.randn(T, B, 4 * H, device=DEV), torch.randn(B, H, device=DEV), torch.randn(B, H, device=DEV)
        w = torch.randn(4 * H, H, device=DEV) / 10
        nh, nc, off = norm_of(4 * H), norm_of(H), st.Norm(0, torch.ones(1, device=DEV), *[None] * 6, 0.0)
        sig, tg, cs, tc, hs, zs = u.clone(), nan(T, B, H), nan(T, B, H), nan(T, B, H), nan(T, B, H), nan(T, B, 4 * H)
        st.lstm_forward(sig, tg, cs, tc, hs, zs, h0, c0, w, nh, nc, off, None)
        gh, da, dz, dn = torch.randn(T, B, H, device=DEV), nan(T, B, 4 * H), nan(T, B, 4 * H), nan(T, B, H)
        dc = st.lstm_backward(gh, sig, tg, cs, tc, c0, da, dz, dn, zs, w, torch.randn(B, H, device=DEV), nh, nc, off,
                              None, None)
        outs = [sig, tg, cs, tc, hs, gh, da, dc] + ([zs, dz, dn] if norm else [])
        outs += [t for n in (nh, nc) for t in (n.mean, n.rstd, n.var, n.dgamma, n.dbeta) if norm == 1]
        outs += [t for n in (nh, nc) for t in (n.mean, n.rstd) if norm == 3]
        return outs

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    if seq not in (True, False):  # it ran as one launch a direction, of many programs
        assert st.grid_programs(T, B, H, 1, (norm, norm), torch.device(DEV)) >= 25
    if seq in ("grid, bn rows", "grid, ln rows"):  # 91 programs: 7 row blocks (13 unit blocks) exchanging statistics
        assert st._grid_plan(T, B, H, 1, (norm, norm), torch.device(DEV)) == (91, True)


def test_step_product_keeps_float32_accuracy_on_the_tensor_cores():
    """The step kernels' float32 products, compiled: three TF32 products, each in its own
    accumulator ("split", the default) or chained (Triton's tf32x3), are within float32
    rounding of the float64 product; one TF32 product (PyTorch's TF32 setting) is not,
    which shows the check can tell."""
    from conftest import step_product

    torch.manual_seed(1)
    a, w = torch.randn(13, 100, device=DEV), torch.randn(100, 5, device=DEV)
    want = a.double() @ w.double()
    err = {p: ((step_product(a, w, p).double() - want).norm() / want.norm()).item()
           for p in ("split", "tf32x3", "tf32")}
    assert err["split"] < 5e-6 and err["tf32x3"] < 5e-6, err
    assert err["tf32"] > 5e-5, err
