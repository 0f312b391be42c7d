"""Models on a fast path equal the same models on the reference loop: outputs,
gradients and running statistics, in training and evaluation, for the scan path
(what the suite uses by default) and the Triton kernels (in Triton's interpreter on
CPU-only machines; tests/test_gpu.py repeats this with compiled kernels)."""

import copy

import pytest
import torch

import baselines
from baselines import fused
from conftest import use_scan_loops
from suite.fastpath import EagerTrainStep
from tasks.base import Batch

KERNELS = fused.triton is not None and fused.interpreting()
CUSTOM = ["rnn-loop", "irnn-loop", "bn-rnn", "bn-rnn-input", "ln-rnn", "lstm-loop", "bn-lstm", "ln-lstm",
          "gru-loop", "bn-gru", "ln-gru"]


@pytest.fixture(params=["scan", "scan-cpp", pytest.param("fused", marks=pytest.mark.skipif(
    not KERNELS, reason="needs Triton's interpreter (TRITON_INTERPRET=1 on CPU-only machines)"))])
def path(request, monkeypatch):
    monkeypatch.setattr(fused, "ALLOW_INTERPRETER", request.param == "fused")
    use_scan_loops(monkeypatch, request.param == "scan-cpp")
    return request.param


def paths(model):
    return {m.last_path for m in model.modules() if hasattr(m, "last_path")}


def assert_same_pass(ref, fast, ya, yb) -> None:
    """A training pass of the fast model gives the reference's outputs and the same
    gradient of every parameter (float64)."""
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(ya.square().sum(), list(ref.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(fast.parameters()))
    for (n, _), a, b in zip(ref.named_parameters(), ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=n)


def assert_same_buffers(ref, fast) -> None:
    """The fast model's running statistics are the reference's."""
    for (n, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=n)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("name,overrides", [(n, {}) for n in CUSTOM] + [
    ("bn-lstm", {"norm_stats": "shared"}), ("bn-gru", {"norm_eval": "batch"}), ("bn-rnn", {"norm_stats": "shared"})])
def test_fast_model_equals_reference(path, name, overrides):
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=3, output_size=2, hidden_size=12, num_layers=2, **overrides)
    fast = copy.deepcopy(ref)
    baselines.set_fast_path(ref, False)
    x = torch.randn(6, 9, 3)
    for step in range(2):  # training passes update running statistics
        ya, yb = ref(x + step), fast(x + step)
        assert paths(fast) == {path} and paths(ref) == {"loop"}
        assert rel(yb, ya) < 1e-5
        ga = torch.autograd.grad(ya.square().sum(), list(ref.parameters()))
        gb = torch.autograd.grad(yb.square().sum(), list(fast.parameters()))
        for (n, _), a, b in zip(ref.named_parameters(), ga, gb):
            assert rel(b, a) < 1e-4, n
    for (n, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        assert a.shape == b.shape and rel(b, a) < 1e-5, n
    ref.eval(), fast.eval()
    x_long = torch.randn(6, 14, 3)  # longer than training: population rows past the end
    assert rel(fast(x_long), ref(x_long)) < 1e-5 and paths(fast) == {path}


@pytest.mark.parametrize("name", ["bn-lstm", "ln-gru", "bn-rnn", "irnn-loop"])
def test_scan_training_equals_reference_loop(name, scan_loops):
    """Several Adam steps (with clipping) on the scan path and on the reference loop end
    at the same weights and running statistics, and every step's loss agrees."""
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=2, output_size=1, hidden_size=10).double()
    fast = copy.deepcopy(ref)
    baselines.set_fast_path(ref, False)
    loss_fn = lambda out, b: torch.nn.functional.mse_loss(out, b.y)  # noqa: E731
    steps = [EagerTrainStep(m, loss_fn, torch.optim.Adam(m.parameters(), lr=1e-2), 1.0) for m in (ref, fast)]
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        batch = Batch(torch.rand(8, 12, 2, generator=g, dtype=torch.float64),
                      torch.rand(8, 1, generator=g, dtype=torch.float64))
        la, lb = (s(batch).loss for s in steps)
        torch.testing.assert_close(lb, la, rtol=1e-10, atol=1e-12)
    assert paths(fast) == {scan_loops} and paths(ref) == {"loop"}
    for (k, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=k)


def test_paths_that_stay_on_the_loop(monkeypatch, scan_loops):
    torch.manual_seed(1)
    monkeypatch.setattr(fused, "ALLOW_INTERPRETER", KERNELS)
    kernel = "fused" if KERNELS else scan_loops
    m = baselines.create("bn-rnn", input_size=3, output_size=2, hidden_size=8)
    x = torch.randn(4, 5, 3)
    lengths = torch.tensor([5, 3, 5, 2])
    m(x, lengths)  # padding: masked batch statistics live in the loop
    assert paths(m) == {"loop"}
    m(x)
    assert paths(m) == {kernel}
    m.double()(x.double())  # the kernel computes in float32; scan takes float64
    assert paths(m) == {scan_loops}
    ln = baselines.create("ln-lstm", input_size=3, output_size=2, hidden_size=8)
    ln(x, lengths)  # layer norm and plain cells never look at the padding: fast
    assert paths(ln) == {kernel}
    lstm = baselines.create("bn-lstm", input_size=3, output_size=2, hidden_size=8)
    lstm(x, lengths)
    assert paths(lstm) == {"loop"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lstm(x)
    assert paths(lstm) == {"loop"}
    baselines.set_fast_path(lstm, False)  # the switch behind --set train.fast_path=false
    lstm(x)
    assert paths(lstm) == {"loop"} and baselines.recurrence_path(lstm) == "loop"


def test_padded_plain_and_layer_norm_cells_equal_the_loop(scan_loops):
    """The fast path runs padded batches of cells without batch statistics; valid steps
    (and the head's reading of each sequence's last valid step) match the loop."""
    torch.manual_seed(2)
    lengths = torch.tensor([7, 3, 7, 1])
    x = torch.randn(4, 7, 3)
    for name in ("gru-loop", "ln-lstm", "ln-rnn"):
        ref = baselines.create(name, input_size=3, output_size=2, hidden_size=8)
        fast = copy.deepcopy(ref)
        baselines.set_fast_path(ref, False)
        ya, yb = ref(x, lengths), fast(x, lengths)
        assert paths(fast) == {scan_loops} and rel(yb, ya) < 1e-6, name
        ga = torch.autograd.grad(ya.square().sum(), list(ref.parameters()))
        gb = torch.autograd.grad(yb.square().sum(), list(fast.parameters()))
        for (n, _), a, b in zip(ref.named_parameters(), ga, gb):
            assert rel(b, a) < 1e-5, (name, n)


@pytest.mark.parametrize("name", ["bn-lstm", "bn-gru", "bn-rnn"])
def test_input_norm_runs_in_the_compiled_loops_and_equals_the_reference(name, monkeypatch):
    """With the compiled loops, training passes batch-normalize the input term inside
    them (``SeqNorm.seq`` is not called for it): outputs, gradients and running
    statistics equal the reference loop's, and evaluation (population statistics, where
    the norm is ``SeqNorm.seq`` again) too."""
    from baselines.norm import SeqNorm

    use_scan_loops(monkeypatch, True)
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=3, output_size=2, hidden_size=8).double()
    fast = copy.deepcopy(ref)
    baselines.set_fast_path(ref, False)
    input_norms = {id(n) for n in fast.modules() if isinstance(n, SeqNorm)} & {id(n) for n in fast.core.norm_ih}
    seen: list[int] = []
    real = SeqNorm.seq
    monkeypatch.setattr(SeqNorm, "seq", lambda self, *a, **k: seen.append(id(self)) or real(self, *a, **k))
    x = torch.randn(6, 9, 3, dtype=torch.float64)
    for step in range(2):
        ya, yb = ref(x + step), fast(x + step)
        assert paths(fast) == {"scan-cpp"}
        assert_same_pass(ref, fast, ya, yb)
    assert not input_norms & set(seen)
    assert_same_buffers(ref, fast)
    ref.eval(), fast.eval()
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-12)
    assert input_norms <= set(seen)  # evaluation: population statistics, outside the loops


@pytest.mark.parametrize("name", ["lstm-loop", "gru-loop", "rnn-loop"])
def test_plain_cells_project_their_input_in_the_recurrence(name, monkeypatch, scan_loops):
    """On the scan path a plain cell's layers leave the input projection to the
    recurrence (``scan.InputProjection``, time-major into its loops' buffer): the
    batch-major projection never runs, and two layers train as the reference loop."""
    from baselines import cells

    torch.manual_seed(0)
    ref = baselines.create(name, input_size=3, output_size=2, hidden_size=8, num_layers=2).double()
    fast = copy.deepcopy(ref)
    baselines.set_fast_path(ref, False)
    x = torch.randn(6, 9, 3, dtype=torch.float64)
    ya = ref(x)
    monkeypatch.setattr(cells, "project", lambda *a: pytest.fail("the batch-major projection ran"))
    yb = fast(x)
    assert paths(fast) <= {"scan", "scan-cpp"}
    assert_same_pass(ref, fast, ya, yb)


@pytest.mark.parametrize("name", ["bn-lstm", "bn-gru", "bn-rnn"])
@pytest.mark.parametrize("inputs,hidden", [(1, 8), (4, 8), (5, 8), (2, 4)])
def test_the_loops_project_few_input_features_themselves(name, inputs, hidden, monkeypatch):
    """Where a layer's input has at most ``scan.PROJECT_INPUTS`` features and needs no
    gradient (the first layer's data), the compiled loops compute x W_ih^T themselves:
    the projection runs only for wider inputs and for the second layer, whose input
    needs a gradient (4 features at 4 hidden units). Either way the outputs and every
    gradient, W_ih's included, are the reference loop's, over two training passes."""
    from baselines import normalized, scan

    assert scan.PROJECT_INPUTS == 4
    use_scan_loops(monkeypatch, True)
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=inputs, output_size=2, hidden_size=hidden, num_layers=2).double()
    fast = copy.deepcopy(ref)
    baselines.set_fast_path(ref, False)
    projected: list[int] = []
    real = normalized.project
    x = torch.randn(6, 9, inputs, dtype=torch.float64)
    for step in range(2):
        ya = ref(x + step)
        monkeypatch.setattr(normalized, "project", lambda s, w: projected.append(s.shape[-1]) or real(s, w))
        yb = fast(x + step)
        monkeypatch.setattr(normalized, "project", real)
        assert paths(fast) == {"scan-cpp"}
        assert_same_pass(ref, fast, ya, yb)
    assert projected == ([hidden] if inputs <= 4 else [inputs, hidden]) * 2
    assert_same_buffers(ref, fast)


@pytest.mark.parametrize("name", ["bn-lstm", "bn-gru", "bn-rnn"])
def test_input_norm_in_the_loops_gives_the_same_on_several_threads(name, monkeypatch):
    """With two PyTorch threads the compiled loops still normalize the input term (no
    ``SeqNorm.seq``), its passes splitting the features (40 units: 40 to 160 of them)
    between the threads: outputs, gradients and running statistics are those of one
    thread."""
    from baselines.norm import SeqNorm

    use_scan_loops(monkeypatch, True)
    torch.manual_seed(0)
    one = baselines.create(name, input_size=3, output_size=2, hidden_size=40, num_layers=2).double()
    two = copy.deepcopy(one)
    x = torch.randn(6, 9, 3, dtype=torch.float64)
    seen: list[int] = []
    real = SeqNorm.seq
    monkeypatch.setattr(SeqNorm, "seq", lambda self, *a, **k: seen.append(id(self)) or real(self, *a, **k))
    y1 = one(x)
    g1 = torch.autograd.grad(y1.square().sum(), list(one.parameters()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y2 = two(x)
        g2 = torch.autograd.grad(y2.square().sum(), list(two.parameters()))
    finally:
        torch.set_num_threads(before)
    assert not seen and paths(two) == {"scan-cpp"}
    torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-14)
    for (n, _), a, b in zip(one.named_parameters(), g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=n)
    for (n, a), b in zip(one.named_buffers(), two.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=n)
