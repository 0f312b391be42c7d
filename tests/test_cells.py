"""Loop cells compute exactly what the cuDNN modules compute (float64, tiny sizes),
outputs and gradients, for the same weights, on their fast path and as the reference
loop; plus the model's encoder/head wiring."""

import pytest
import torch
import torch.nn.functional as F

import baselines
from baselines.cells import CudnnCore, LoopCore

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]


@pytest.mark.parametrize("cell,nl", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("fast", [True, False])
def test_loop_equals_cudnn_module(cell, nl, layers, fast):
    """``fast=False``: the reference loop itself (the default runs the scan path)."""
    torch.manual_seed(0)
    ref = CudnnCore(cell, 3, 5, layers, nl).double()
    loop = LoopCore(cell, 3, 5, layers, nl).double()
    loop.fast = fast
    loop.load_state_dict(ref.state_dict())  # same parameter names
    x = torch.randn(4, 7, 3, dtype=torch.float64, requires_grad=True)
    if cell == "lstm":
        state = (torch.randn(layers, 4, 5, dtype=torch.float64), torch.randn(layers, 4, 5, dtype=torch.float64))
    else:
        state = torch.randn(layers, 4, 5, dtype=torch.float64)
    out_r, st_r = ref(x, state)
    out_l, st_l = loop(x, state)
    torch.testing.assert_close(out_l, out_r, rtol=1e-10, atol=1e-12)
    for a, b in zip(st_l if cell == "lstm" else (st_l,), st_r if cell == "lstm" else (st_r,)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out_r)
    g_ref = torch.autograd.grad((out_r * w).sum(), [x, *ref.parameters()])
    g_loop = torch.autograd.grad((out_l * w).sum(), [x, *loop.parameters()])
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_loop, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"grad of {name}")
    assert (loop.last_path == "loop") == (not fast), loop.last_path  # the path meant ran


@pytest.mark.parametrize("cell,nl", CELLS)
def test_loop_gradcheck(cell, nl):
    torch.manual_seed(1)
    core = LoopCore(cell, 2, 3, 1, nl).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: core(inp)[0], (x,))


@pytest.mark.parametrize("name", ["rnn", "irnn", "gru", "lstm"])
def test_registered_loop_twin_matches(name):
    """`X` and `X-loop` models give the same outputs and gradients for the same weights."""
    torch.manual_seed(2)
    a = baselines.create(name, input_size=2, output_size=1, hidden_size=6).double()
    b = baselines.create(f"{name}-loop", input_size=2, output_size=1, hidden_size=6).double()
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 9, 2, dtype=torch.float64)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(ya.sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.sum(), list(b.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)


def test_irnn_init_and_forget_bias():
    m = baselines.create("irnn", input_size=2, output_size=1, hidden_size=4)
    w_hh = m.core.rnn.weight_hh_l0
    torch.testing.assert_close(w_hh, torch.eye(4))
    assert (m.core.rnn.bias_ih_l0 == 0).all() and (m.core.rnn.bias_hh_l0 == 0).all()
    assert m.core.rnn.weight_ih_l0.std() < 0.01  # N(0, 0.001)
    torch.manual_seed(0)
    wide = baselines.create("irnn", input_size=64, output_size=1, hidden_size=128).core.rnn.weight_ih_l0
    assert wide.std().item() == pytest.approx(0.001, rel=0.05)  # 8192 draws: within 5%
    for name in ("lstm", "gru-loop"):  # init=orthogonal: each gate's H x H block of W_hh on its own
        w = baselines.create(name, input_size=2, output_size=1, hidden_size=6, init="orthogonal").core.rnn.weight_hh_l0
        for k in range(w.shape[0] // 6):
            block = w[k * 6:(k + 1) * 6]
            torch.testing.assert_close(block.T @ block, torch.eye(6), atol=1e-5, rtol=0)
    assert m.core.rnn.nonlinearity == "relu"
    lstm = baselines.create("lstm", input_size=2, output_size=1, hidden_size=4)
    b = lstm.core.rnn.bias_ih_l0 + lstm.core.rnn.bias_hh_l0
    torch.testing.assert_close(b[4:8], torch.ones(4))


def test_last_step_head_uses_lengths():
    torch.manual_seed(3)
    m = baselines.create("gru", input_size=2, output_size=3, hidden_size=5)
    x = torch.randn(2, 8, 2)
    lengths = torch.tensor([8, 5])
    y = m(x, lengths)
    y_short = m(x[1:, :5])
    torch.testing.assert_close(y[1], y_short[0])
    torch.testing.assert_close(y[0], m(x[:1])[0])


def test_token_encoder_and_every_step_head():
    m = baselines.create("lstm", vocab_size=10, output_size=9, target="every", hidden_size=4)
    assert isinstance(m.encoder, torch.nn.Embedding)
    y = m(torch.randint(0, 10, (3, 6)))
    assert y.shape == (3, 6, 9)
    with pytest.raises(ValueError):
        baselines.create("lstm", output_size=1)  # neither input_size nor vocab_size


def test_names_wildcards():
    lstms = baselines.names("*lstm*")
    assert {"lstm", "lstm-loop"} <= set(lstms) and all("lstm" in n for n in lstms)
    assert "lstm-loop" not in baselines.names("*lstm*", exclude=["*-loop"])
    assert "rnn" in baselines.names() and "gru" not in baselines.names("*rnn*")


def test_input_projection_equals_f_linear():
    """cells.project (W's gradient as (X^T G)^T) gives F.linear's output and gradients,
    with and without a bias and whether or not x needs its gradient (layer 2 vs layer 1)."""
    from baselines.cells import project

    torch.manual_seed(0)
    for bias, x_grad in ((True, True), (False, False), (True, False)):
        x = torch.randn(5, 7, 3, dtype=torch.float64, requires_grad=x_grad)
        w = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(8, dtype=torch.float64, requires_grad=True) if bias else None
        inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
        g = torch.randn(5, 7, 8, dtype=torch.float64)
        want, got = F.linear(x, w, b), project(x, w, b)
        torch.testing.assert_close(got, want)
        for a, e in zip(torch.autograd.grad((got * g).sum(), inputs), torch.autograd.grad((want * g).sum(), inputs)):
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("name,cell,k", [("lstm", "lstm", 4), ("bn-lstm", "lstm", 4), ("gru-loop", "gru", 3),
                                         ("bn-rnn", "rnn", 1)])
@pytest.mark.parametrize("init", ["cooijmans", "cooijmans-id"])
def test_cooijmans_init_is_their_public_codes(name, cell, k, init):
    """Every weight matrix orthogonal along its shorter side (W_hh as one kH x H matrix:
    their H x kH Wa with orthonormal rows), every bias zero but the LSTM's forget bias,
    and for cooijmans-id the candidate's block of W_hh the identity."""
    H = 6
    torch.manual_seed(0)
    m = baselines.create(name, input_size=1, output_size=3, hidden_size=H, init=init, num_layers=2)
    rnn = m.core.rnn
    for layer in (0, 1):
        w_hh, w_ih = getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"weight_ih_l{layer}")
        assert w_hh.shape == (k * H, H)
        cand = {"rnn": 0, "gru": 2, "lstm": 2}[cell]
        if init == "cooijmans":
            torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(H), atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(w_hh[cand * H:(cand + 1) * H], torch.eye(H))
            if k > 1:  # the other gates' blocks: one orthogonal matrix of their own
                rest = torch.cat([w_hh[:cand * H], w_hh[(cand + 1) * H:]])
                torch.testing.assert_close(rest.T @ rest, torch.eye(H), atol=1e-5, rtol=0)
        gram = w_ih.T @ w_ih if w_ih.shape[0] >= w_ih.shape[1] else w_ih @ w_ih.T
        torch.testing.assert_close(gram, torch.eye(min(w_ih.shape)), atol=1e-5, rtol=0)
        bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        expect = torch.zeros(k * H)
        if cell == "lstm":
            expect[H:2 * H] = 1.0  # the presets' forget bias
        torch.testing.assert_close(bias, expect)
    torch.testing.assert_close(m.head.weight @ m.head.weight.T, torch.eye(3), atol=1e-5, rtol=0)
    assert (m.head.bias == 0).all()
