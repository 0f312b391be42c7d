"""Gradient diagnostics: parameter groups, group norms, the gradient-flow profile and
when the runner records it."""

import math

import pytest
import torch

import baselines
import tasks
from suite import diagnostics
from suite.profiles import build_specs
from suite.runner import train_one

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adding():
    task = tasks.create("adding", T=6, n_val=16, n_test=16)
    return task, next(task.eval_batches("val", 5, CPU))


def _model(name, **kw):
    torch.manual_seed(0)
    return baselines.create(name, output_size=1, input_size=2, hidden_size=4, **kw)


@pytest.mark.parametrize("name", baselines.names())
def test_every_parameter_of_every_model_has_its_group(name):
    model = _model(name)
    groups = {n: diagnostics.param_group(n) for n, _ in model.named_parameters()}
    assert set(groups.values()) <= set(diagnostics.GROUPS)
    assert all(g == "recurrent" for n, g in groups.items() if "weight_hh" in n)
    assert all(g == "head" for n, g in groups.items() if n.startswith("head.") and "norm" not in n)
    normalized = baselines.resolve(name).get("norm", "none") != "none"
    assert ("norm" in groups.values()) == normalized


def test_group_norms_add_up_to_the_global_norm_and_match_each_group(adding):
    task, batch = adding
    model = _model("lstm")
    task.loss(model(batch.x), batch).backward()
    norms = diagnostics.group_norms(model)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert math.sqrt(sum(v.item() ** 2 for v in norms.values())) == pytest.approx(total.item(), rel=1e-5)
    rec = [p.grad for n, p in model.named_parameters() if diagnostics.param_group(n) == "recurrent"]
    assert norms["recurrent"].item() == pytest.approx(torch.cat([g.flatten() for g in rec]).norm().item(), rel=1e-6)


def _reference_flow(model, batch):
    """‖∂L/∂h_t‖ of a one-layer tanh RNN by hand-written backpropagation through time:
    g_{T-1} = ∂L/∂h_{T-1} from the head, g_t = W_hhᵀ (g_{t+1} ⊙ (1 - h_{t+1}²))."""
    rnn = model.core.rnn
    w_ih, w_hh = rnn.weight_ih_l0.detach().double(), rnn.weight_hh_l0.detach().double()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double()
    x, y = batch.x.double(), batch.y.double()
    B, T, _ = x.shape
    h = torch.zeros(B, w_hh.shape[0], dtype=torch.float64)
    hs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ w_ih.T + h @ w_hh.T + b)
        hs.append(h)
    w_o, b_o = model.head.weight.detach().double(), model.head.bias.detach().double()
    err = hs[-1] @ w_o.T + b_o - y  # MSE over B outputs: dL/dout = 2 err / B
    g = (2.0 / err.numel()) * err @ w_o
    grads = [g]
    for t in range(T - 2, -1, -1):
        g = (g * (1 - hs[t + 1] ** 2)) @ w_hh
        grads.append(g)
    return torch.stack([gr.norm() for gr in reversed(grads)])


def test_gradient_flow_of_a_cudnn_model_equals_hand_written_bptt(adding):
    task, batch = adding
    model = _model("rnn")  # cuDNN module: probed through its loop twin
    flow = diagnostics.gradient_flow(model, task, batch)
    assert flow.shape == (task.T,)
    torch.testing.assert_close(flow.double(), _reference_flow(model, batch), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", baselines.names())
def test_gradient_flow_works_for_every_model_and_leaves_it_untouched(name, adding):
    task, batch = adding
    model = _model(name)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flow = diagnostics.gradient_flow(model, task, batch)
    assert flow.shape == (task.T,) and torch.isfinite(flow).all() and (flow > 0).all()
    after = model.state_dict()  # running statistics of batch norm included
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_profile_shows_vanishing_in_a_saturated_rnn_and_not_in_an_irnn(adding):
    """Saturated tanh units pass almost no gradient back in time; the IRNN's identity
    recurrence (Le et al. 2015) passes it back nearly unchanged."""
    task, batch = adding
    saturated = _model("rnn-loop")
    with torch.no_grad():
        saturated.core.rnn.weight_hh_l0.mul_(20.0)
    flow = diagnostics.gradient_flow(saturated, task, batch)
    assert flow[0] < 1e-2 * flow[-1]
    irnn = diagnostics.gradient_flow(_model("irnn-loop"), task, batch)
    assert irnn[0] > 0.5 * irnn[-2]


def test_runner_probes_on_schedule_once_per_step():
    """Probes at step 0, every probe_every steps (also between evaluations), and at the
    end; a scheduled step is never recorded twice."""
    (spec,) = build_specs(task=["adding"], model=["gru"], task_args={"T": 5, "n_val": 32, "n_test": 32},
                          model_args={"hidden_size": 4},
                          train=dict(max_steps=12, eval_every=5, probe_every=4, batch_size=8, eval_batch_size=32),
                          seeds="0", device="cpu")
    diags = []
    train_one(spec, lambda m, d: diags.extend(d))
    steps = [s for s, kind, t, _ in diags if kind == "grad_flow" and t == 0]
    assert steps == [0, 4, 8, 12]
    assert len(diags) == 4 * 5


def test_gradient_flow_of_a_padded_batch_is_aligned_at_each_sequence_end():
    """Entry T-1-k is the gradient k steps before each sequence's readout, over the
    sequences at least k+1 long, scaled to the batch: built here from each sequence
    alone (the batch's mean loss gives each 1/B of its own gradient)."""
    task = tasks.create("listops", min_length=4, max_length=30, n_train=50, n_val=20, n_test=20)
    batch = next(task.eval_batches("val", 8, CPU))
    lengths = batch.lengths.tolist()
    assert len(set(lengths)) > 2  # uneven
    torch.manual_seed(0)
    model = baselines.create("gru", vocab_size=task.vocab_size, output_size=task.output_size, hidden_size=6)
    flow = diagnostics.gradient_flow(model, task, batch)
    B, T = batch.x.shape
    assert flow.shape == (T,) and max(lengths) == T
    alone = []
    for i, n in enumerate(lengths):
        one = type(batch)(batch.x[i:i + 1, :n], batch.y[i:i + 1], None)
        alone.append(diagnostics.gradient_flow(model, task, one).double() / B)  # its share of the batch's mean
    expect = torch.zeros(T, dtype=torch.float64)
    for k in range(T):
        terms = [p[n - 1 - k] ** 2 for p, n in zip(alone, lengths) if n > k]
        expect[T - 1 - k] = math.sqrt(B / len(terms) * sum(terms))
    torch.testing.assert_close(flow.double(), expect, rtol=1e-4, atol=1e-9)
