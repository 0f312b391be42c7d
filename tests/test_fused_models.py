"""Models on the fused path equal the same models on the reference loop: outputs,
gradients and running statistics, in training and evaluation (Triton interpreter
on CPU-only machines; tests/test_gpu.py repeats this with compiled kernels)."""

import copy

import pytest
import torch

import baselines

fused = pytest.importorskip("baselines.fused")
if fused.triton is None or not fused.interpreting():
    pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1 on CPU-only machines)", allow_module_level=True)

CUSTOM = ["rnn-loop", "irnn-loop", "bn-rnn", "bn-rnn-input", "ln-rnn", "lstm-loop", "bn-lstm", "ln-lstm",
          "gru-loop", "bn-gru", "ln-gru"]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(fused, "ALLOW_INTERPRETER", True)


def set_fast(model, fast):
    for m in model.modules():
        if hasattr(m, "fast"):
            m.fast = fast


def paths(model):
    return {m.last_path for m in model.modules() if hasattr(m, "last_path")}


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("name,overrides", [(n, {}) for n in CUSTOM] + [
    ("bn-lstm", {"norm_stats": "shared"}), ("bn-gru", {"norm_eval": "batch"}), ("bn-rnn", {"norm_stats": "shared"})])
def test_fused_model_equals_reference(name, overrides):
    torch.manual_seed(0)
    ref = baselines.create(name, input_size=3, output_size=2, hidden_size=12, num_layers=2, **overrides)
    fast = copy.deepcopy(ref)
    set_fast(ref, False)
    x = torch.randn(6, 9, 3)
    for step in range(2):  # training passes update running statistics
        ya, yb = ref(x + step), fast(x + step)
        assert paths(fast) == {"fused"} and paths(ref) == {"loop"}
        assert rel(yb, ya) < 1e-5
        ga = torch.autograd.grad(ya.square().sum(), list(ref.parameters()))
        gb = torch.autograd.grad(yb.square().sum(), list(fast.parameters()))
        for (n, _), a, b in zip(ref.named_parameters(), ga, gb):
            assert rel(b, a) < 1e-4, n
    for (n, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        assert a.shape == b.shape and rel(b, a) < 1e-5, n
    ref.eval(), fast.eval()
    x_long = torch.randn(6, 14, 3)  # longer than training: population rows past the end
    assert rel(fast(x_long), ref(x_long)) < 1e-5 and paths(fast) == {"fused"}


def test_paths_that_stay_on_the_loop():
    torch.manual_seed(1)
    m = baselines.create("bn-rnn", input_size=3, output_size=2, hidden_size=8)
    x = torch.randn(4, 5, 3)
    m(x, torch.tensor([5, 3, 5, 2]))  # padding: masked statistics live in the loop
    assert paths(m) == {"loop"}
    m(x)
    assert paths(m) == {"fused"}
    m.double()(x.double())  # the kernel computes in float32
    assert paths(m) == {"loop"}
    lstm = baselines.create("bn-lstm", input_size=3, output_size=2, hidden_size=8)
    lstm(x, torch.tensor([5, 3, 5, 2]))
    assert paths(lstm) == {"loop"}
    baselines.set_fast_path(lstm, False)  # the switch behind --set train.fast_path=false
    lstm(x)
    assert paths(lstm) == {"loop"} and baselines.recurrence_path(lstm) == "loop"
