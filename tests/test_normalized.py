"""Normalized recurrent cells (baselines/norm.py, baselines/normalized.py).

Each variant is checked against its definition: with norm off it is the plain loop
cell; batch statistics are per time step, update only in training and are replaced
by population statistics at evaluation (or kept, when switched); steps past the
training length reuse the last row; padding never changes a result; gradients
pass gradcheck in float64; every registered model runs on a real-valued and a
token task.
"""

import copy

import pytest
import torch
from torch.func import functional_call

import baselines
import tasks
from baselines.norm import SeqNorm
from baselines.normalized import OutputStack
from suite import diagnostics
from suite.errors import UserError

NORM_MODELS = baselines.names(["bn-*", "ln-*"])
BN_MODELS = baselines.names("bn-*")
PLAIN_LOOP = {"rnn": "rnn-loop", "gru": "gru-loop", "lstm": "lstm-loop"}


def make(name: str, **overrides) -> torch.nn.Module:
    return baselines.create(name, input_size=2, output_size=1, **{"hidden_size": 5, **overrides})


def norms(model: torch.nn.Module) -> list[SeqNorm]:
    return [m for m in model.modules() if isinstance(m, SeqNorm)]


def rand_x(B=6, T=5, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 2, generator=g, dtype=dtype)


def test_registry_has_the_family():
    expected = {"bn-rnn", "bn-rnn-input", "bn-rnn-seed", "bn-lstm", "bn-gru", "ln-rnn", "ln-gru", "ln-lstm"}
    assert expected <= set(NORM_MODELS)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", NORM_MODELS)
def test_norm_off_equals_plain_loop_cell(name, layers):
    torch.manual_seed(0)
    m = make(name, norm="none", out_stack=False, impl="loop", num_layers=layers)
    assert not norms(m)
    plain = make(PLAIN_LOOP[m.cfg.cell], num_layers=layers)
    m.load_state_dict(plain.state_dict())  # strict: the same parameter names
    x = rand_x()
    y, y_plain = m(x), plain(x)
    assert torch.equal(y, y_plain)
    for g, g_plain in zip(torch.autograd.grad(y.sum(), list(m.parameters())),
                          torch.autograd.grad(y_plain.sum(), list(plain.parameters()))):
        assert torch.equal(g, g_plain)


@pytest.mark.parametrize("name", ["ln-lstm", "ln-gru", "ln-rnn"])
def test_layer_norm_input_term_is_time_major(name):
    """A layer-norm cell's input term, LN(W_ih x) + b_ih of every step, is computed
    time-major (the recurrences' order) and handed over as a (B, T, G*H) view, with the
    values of the norm of the batch-major projection."""
    from baselines.cells import project

    torch.manual_seed(0)
    m = baselines.create(name, input_size=3, output_size=2, hidden_size=8).double()
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    u = m.core.input_term(0, x, None)
    w_ih, _, b_ih, _ = m.core.weights(0)
    assert u.shape == (5, 7, w_ih.shape[0]) and u.transpose(0, 1).is_contiguous()
    torch.testing.assert_close(u, m.core.norm_ih[0].seq(project(x, w_ih), None, shift=b_ih), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NORM_MODELS)
def test_norm_parameters_are_in_the_norm_group(name):
    m = make(name)
    groups = {n: diagnostics.param_group(n) for n, _ in m.named_parameters()}
    assert any(g == "norm" for g in groups.values())
    for n, g in groups.items():
        assert (g == "norm") == ("norm" in n), n
        if "weight_hh" in n:
            assert g == "recurrent"


def test_every_layer_is_normalized():
    m = make("bn-lstm", num_layers=2)
    assert len(m.core.norm_ih) == len(m.core.norm_hh) == len(m.core.norm_c) == 2
    assert m.core.norm_ih[1].features == 4 * 5  # layer 2 normalizes W_x h^(1), 4H gates
    m(rand_x())
    assert all(n.running_mean.shape[0] == 5 for n in norms(m))


def test_gamma_init_and_forget_bias():
    for name in NORM_MODELS:
        m = make(name)
        gamma = {"bn-rnn-input": 1.0, "bn-rnn-seed": 1.0}.get(name, 0.1 if name.startswith("bn-") else 1.0)
        for norm in norms(m):
            torch.testing.assert_close(norm.weight.detach(), torch.full_like(norm.weight, gamma))
            if norm.bias is not None:
                assert (norm.bias == 0).all()
        core = m.core
        if hasattr(core, "norm_ih") and core.norm_ih is not None:  # no own β on W_x x, W_h h
            assert core.norm_ih[0].bias is None
        if hasattr(core, "norm_hh") and core.norm_hh is not None:
            assert core.norm_hh[0].bias is None
        if m.cfg.cell == "lstm":
            b = core.rnn.bias_ih_l0 + core.rnn.bias_hh_l0
            torch.testing.assert_close(b[5:10], torch.ones(5))
            assert core.norm_c is not None and core.norm_c[0].bias is not None  # BN/LN(c_t) has β
    bn = make("bn-lstm")
    assert bn.cfg.norm_eps == 1e-5 and bn.cfg.norm_stats == "per_step" and bn.cfg.norm_eval == "population"


def test_ablation_switches_are_overrides_and_validated():
    spec = baselines.resolve("bn-lstm", norm_gamma=1.0, norm_stats="shared")
    assert spec["norm_gamma"] == 1.0 and spec["norm_stats"] == "shared" and spec["norm"] == "batch"
    m = make("bn-lstm", norm_at="input", norm_cell=False)
    assert m.core.norm_hh is None and m.core.norm_c is None and m.core.norm_ih is not None
    bad = [dict(norm_at="everywhere"), dict(norm="group"), dict(norm_gamma=-1.0), dict(impl="cudnn"),
           dict(cell="gru"),  # bn-lstm normalizes c_t, which a GRU does not have
           dict(relu_in_affine=True), dict(norm_eps=0.0), dict(norm_momentum=0.0)]
    for overrides in bad:
        with pytest.raises(UserError) as e:
            baselines.resolve("bn-lstm", **overrides)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no parameter 'norm'"):
        baselines.resolve("lstm", norm="batch")  # plain cells have no norm switches


# -- batch statistics ---------------------------------------------------------------

def test_per_step_statistics_differ_per_step_and_update_only_in_training():
    torch.manual_seed(0)
    m = make("bn-lstm")
    T = 5
    x = rand_x(B=16, T=T) * torch.arange(1, T + 1).view(1, T, 1)  # a different distribution per step
    m.train()
    m(x)
    nih, nhh, nc = m.core.norm_ih[0], m.core.norm_hh[0], m.core.norm_c[0]
    for norm in (nih, nhh, nc):
        assert norm.running_mean.shape == (T, norm.features)
        assert not torch.allclose(norm.running_mean[1:], norm.running_mean[:1].expand(T - 1, -1))
    # the input term's rows are exactly the EMA of its per-step batch statistics (from 0 and 1)
    a = x @ m.core.rnn.weight_ih_l0.detach().t()
    torch.testing.assert_close(nih.running_mean, 0.1 * a.mean(0))
    torch.testing.assert_close(nih.running_var, 0.9 + 0.1 * a.var(0, unbiased=True))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    m(x)
    m(rand_x(B=3, T=9, seed=1))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    m.train()
    m(x)
    assert not torch.equal(nih.running_mean, before["core.norm_ih.0.running_mean"])


def test_population_statistics_make_samples_independent_at_eval():
    torch.manual_seed(0)
    for name in BN_MODELS:
        m = make(name)
        m.train()
        for s in range(3):
            m(rand_x(B=8, seed=s))
        m.eval()
        x = rand_x(B=4, seed=10)
        y = m(x)
        alone = torch.cat([m(x[i:i + 1]) for i in range(4)])
        torch.testing.assert_close(y, alone, rtol=1e-5, atol=1e-6, msg=name)
        # with evaluation batch statistics, a sample's output depends on its batch, as in training
        m.cfg.norm_eval = "batch"
        for norm in norms(m):
            norm.eval_stats = "batch"
        m.eval()
        y_eval = m(x)
        m.train()
        y_train = m(x)
        torch.testing.assert_close(y_eval, y_train, msg=name)
        assert not torch.allclose(y_eval, y, atol=1e-4), name


def test_eval_batch_switch_builds_batch_statistics_norms():
    m = make("bn-gru", norm_eval="batch")
    assert all(n.eval_stats == "batch" for n in norms(m))
    m.eval()
    x = rand_x(B=8)
    y = m(x)
    assert all(n.running_mean.shape[0] == 0 for n in norms(m))  # eval never updates
    m.train()
    torch.testing.assert_close(m(x), y)


def test_recalibrate_replaces_running_averages_with_current_weight_statistics():
    torch.manual_seed(0)
    m = make("bn-lstm", h0_noise=0.5)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for s in range(3):  # running averages now mix statistics of three sets of weights
        m(rand_x(B=8, seed=s)).pow(2).mean().backward()
        opt.step(), opt.zero_grad()
    x1, x2 = rand_x(B=8, seed=10), rand_x(B=8, seed=11)
    assert m.recalibrate([(x1, None), (x2, None)]) == 2
    assert m.training  # mode restored
    nih = m.core.norm_ih[0]
    a1, a2 = (x @ m.core.rnn.weight_ih_l0.detach().t() for x in (x1, x2))
    torch.testing.assert_close(nih.running_mean, (a1.mean(0) + a2.mean(0)) / 2)
    torch.testing.assert_close(nih.running_var, (a1.var(0) + a2.var(0)) / 2)
    assert nih.momentum == 0.1
    # the recurrent terms were computed without h0 noise: recalibrating again gives the same rows
    rows = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    m.eval()
    m.recalibrate([(x1, None), (x2, None)])
    assert not m.training
    for k, v in rows.items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)


def test_seqnorm_population_rows_and_reuse_past_training_length():
    torch.manual_seed(0)
    norm = SeqNorm(3, stats="per_step", gamma=0.5, beta=True)
    with torch.no_grad():
        norm.bias.fill_(0.2)
    norm.train()
    norm.seq(torch.randn(10, 4, 3) * torch.arange(1, 5).view(1, 4, 1))
    rm, rv = norm.running_mean.clone(), norm.running_var.clone()
    assert rm.shape == (4, 3)
    norm.eval()
    a = torch.randn(2, 7, 3)
    rows = torch.tensor([0, 1, 2, 3, 3, 3, 3])  # steps 4..6 reuse the last trained step
    expected = (a - rm[rows]) / torch.sqrt(rv[rows] + 1e-5) * 0.5 + 0.2
    torch.testing.assert_close(norm.seq(a), expected)
    for t in range(7):  # the in-loop path agrees
        torch.testing.assert_close(norm.step(a[:, t], t), expected[:, t])


def test_model_steps_past_training_length_reuse_last_statistics():
    torch.manual_seed(0)
    m = make("bn-lstm")
    m.train()
    m(rand_x(B=8, T=5))
    long_x = rand_x(B=3, T=9, seed=4)
    m.eval()
    y = m(long_x)
    padded = copy.deepcopy(m)  # the same model with rows 5..8 copied from row 4
    for norm in norms(padded):
        idx = torch.arange(9).clamp(max=4)
        norm.running_mean, norm.running_var = norm.running_mean[idx], norm.running_var[idx]
    torch.testing.assert_close(padded(long_x), y, rtol=0, atol=0)
    untrained_rows = copy.deepcopy(padded)
    for norm in norms(untrained_rows):
        norm.running_mean[5:] = 0.0
        norm.running_var[5:] = 1.0
    assert not torch.allclose(untrained_rows(long_x), y)


def test_shared_statistics():
    torch.manual_seed(0)
    a = torch.randn(6, 4, 3) * torch.arange(1, 5).view(1, 4, 1)
    seq_norm = SeqNorm(3, stats="shared")
    seq_norm.train()
    out = seq_norm.seq(a)
    torch.testing.assert_close(out.mean((0, 1)), torch.zeros(3), atol=1e-6, rtol=0)
    assert seq_norm.running_mean.shape == (1, 3)
    expected_mean, expected_var = 0.1 * a.mean((0, 1)), 0.9 + 0.1 * a.reshape(-1, 3).var(0)
    torch.testing.assert_close(seq_norm.running_mean[0], expected_mean)
    torch.testing.assert_close(seq_norm.running_var[0], expected_var)
    # a recurrent term sees one step at a time: per-step batch statistics, but its
    # population statistics pool all steps into the same single row
    step_norm = SeqNorm(3, stats="shared")
    step_norm.train()
    for t in range(4):
        z = step_norm.step(a[:, t], t)
        torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    step_norm.flush()
    torch.testing.assert_close(step_norm.running_mean, seq_norm.running_mean)
    torch.testing.assert_close(step_norm.running_var, seq_norm.running_var)


def test_state_dict_with_other_row_count_loads():
    torch.manual_seed(0)
    a, b = make("bn-rnn"), make("bn-rnn")
    a.train()
    a(rand_x(T=7))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = rand_x(B=2, T=9, seed=3)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    assert norms(b)[0].running_mean.shape[0] == 7


# -- layer norm ---------------------------------------------------------------------

@pytest.mark.parametrize("name", baselines.names("ln-*"))
def test_layer_norm_has_no_running_stats_and_is_the_same_in_train_and_eval(name):
    torch.manual_seed(0)
    m = make(name)
    assert len(list(m.buffers())) == 0
    x = rand_x()
    y_train = m.train()(x)
    torch.testing.assert_close(m.eval()(x), y_train, rtol=0, atol=0)
    torch.testing.assert_close(m(x[:1]), y_train[:1])  # per sample: no batch dependence


def test_layer_norm_normalizes_each_sample_over_features():
    norm = SeqNorm(4, kind="layer", gamma=1.0)
    z = norm.step(torch.randn(3, 4) * 5 + 2, 0)
    torch.testing.assert_close(z.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


# -- padding ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NORM_MODELS)
def test_padding_never_changes_a_result(name):
    torch.manual_seed(0)
    base = make(name)
    lengths = torch.tensor([6, 4, 3, 6, 5])
    x = rand_x(B=5, T=6, seed=1)
    short = x.clone()
    long = torch.cat([x, torch.full((5, 4, 2), 7.0)], dim=1)  # 4 more steps of padding
    for i, n in enumerate(lengths.tolist()):  # different garbage in the padded steps
        short[i, n:] = -3.0
        long[i, n:6] = 11.0
    for mode in ("train", "eval"):
        a, b = copy.deepcopy(base), copy.deepcopy(base)
        a.train(mode == "train"), b.train(mode == "train")
        if mode == "eval":  # population statistics from a padded training batch
            a.train()(short, lengths)
            b.train()(long, lengths)
            a.eval(), b.eval()
        out_a, out_b = a.run(short, lengths), b.run(long, lengths)
        torch.testing.assert_close(out_a.y, out_b.y, msg=f"{name} {mode}")
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out_a.hidden[i, :n], out_b.hidden[i, :n])
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(va, vb, msg=f"{name} {mode} {k}")


@pytest.mark.parametrize("stats", ["per_step", "shared"])
def test_masked_and_fused_paths_agree(stats):
    """An all-valid mask takes the masked (composite) path; no mask the fused one."""
    torch.manual_seed(0)
    a = torch.randn(5, 4, 3) * torch.arange(1, 5).view(1, 4, 1) + 2
    full = torch.ones(5, 4, dtype=torch.bool)
    fused, masked = SeqNorm(3, stats=stats, gamma=0.7), SeqNorm(3, stats=stats, gamma=0.7)
    for norm in (fused, masked):
        norm.train()
    torch.testing.assert_close(masked.seq(a, full), fused.seq(a))
    torch.testing.assert_close(masked.running_mean, fused.running_mean)
    torch.testing.assert_close(masked.running_var, fused.running_var)
    step_fused, step_masked = SeqNorm(3, stats=stats), SeqNorm(3, stats=stats)
    for norm in (step_fused, step_masked):
        norm.train()
    for t in range(4):
        torch.testing.assert_close(step_masked.step(a[:, t], t, full[:, t]), step_fused.step(a[:, t], t))
    step_fused.flush(), step_masked.flush()
    torch.testing.assert_close(step_masked.running_mean, step_fused.running_mean)
    torch.testing.assert_close(step_masked.running_var, step_fused.running_var)
    if stats == "per_step":  # what the recurrent term's steps gather equals the whole-sequence update
        torch.testing.assert_close(step_fused.running_mean, fused.running_mean)
        torch.testing.assert_close(step_fused.running_var, fused.running_var)


def test_batch_of_one_in_training_is_finite():
    norm = SeqNorm(3)
    norm.train()
    out = norm.seq(torch.randn(1, 4, 3))
    assert torch.isfinite(out).all() and (out == 0).all()  # no spread to normalize
    torch.testing.assert_close(norm.running_var, torch.ones(4, 3))  # nothing to estimate


def test_padded_steps_are_left_out_of_batch_statistics():
    norm = SeqNorm(2, stats="per_step")
    norm.train()
    a = torch.randn(4, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = norm.seq(a, mask)
    for t in range(3):
        valid = a[mask[:, t], t]
        expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(out[mask[:, t], t], expected)
    # step 2 has one valid sample: no variance to estimate, so it gets no row, and evaluation
    # takes the last estimated row's statistics there, not the identity ones of a fresh row
    assert norm.running_mean.shape == (2, 2)
    norm.eval()
    x = torch.randn(2, 3, 2)
    rm, rv = norm.running_mean[1], norm.running_var[1]
    torch.testing.assert_close(norm.seq(x)[:, 2], (x[:, 2] - rm) / torch.sqrt(rv + 1e-5))


# -- the seed document's stack ------------------------------------------------------

def test_seed_stack_normalizes_features_over_batch_and_time_and_its_formula():
    torch.manual_seed(0)
    m = make("bn-rnn-seed")
    assert m.cfg.impl == "cudnn" and m.head_stack is not None and m.head_stack.linear is not None
    h = torch.randn(4, 6, 5) * 3 + 1
    stack = m.head_stack
    stack.train()
    z = stack.norm_in.seq(h)  # per feature over batch and time (not over features or time only)
    torch.testing.assert_close(z.mean((0, 1)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var((0, 1), unbiased=False), torch.ones(5), atol=1e-3, rtol=0)

    norm = lambda v: (v - v.mean((0, 1))) / torch.sqrt(v.var((0, 1), unbiased=False) + 1e-5)  # noqa: E731
    gamma, beta = torch.full((5,), 2.0), torch.full((5,), -0.5)
    for relu_in_affine in (False, True):
        s = OutputStack(5, m.cfg.norm_factory(), stack=True, relu_in_affine=relu_in_affine)
        s.load_state_dict(stack.state_dict())
        with torch.no_grad():
            for n in (s.norm_in, s.norm_mid):
                n.weight.copy_(gamma), n.bias.copy_(beta)
        if relu_in_affine:  # γ·ReLU(ẑ) + β
            block = lambda v: gamma * torch.relu(norm(v)) + beta  # noqa: E731
        else:  # ReLU(γ·ẑ + β)
            block = lambda v: torch.relu(gamma * norm(v) + beta)  # noqa: E731
        expected = block(s.linear(block(h)))
        torch.testing.assert_close(s(h), expected)
        assert (expected.min() < 0) == relu_in_affine


def test_seed_stack_without_norm_is_relu_linear_relu():
    torch.manual_seed(0)
    m = make("bn-rnn-seed", norm="none")
    assert not norms(m) and m.head_stack is not None
    h = torch.randn(2, 3, 5)
    expected = torch.relu(m.head_stack.linear(torch.relu(h)))
    torch.testing.assert_close(m.head_stack(h), expected)


# -- h0 noise -------------------------------------------------------------------------

def test_h0_noise_only_in_training():
    torch.manual_seed(0)
    m = make("bn-lstm", h0_noise=0.1)
    x = rand_x()
    m.train()
    assert not torch.equal(m(x), m(x))
    quiet = make("bn-lstm")
    quiet.load_state_dict(m.state_dict())  # the same weights and running statistics
    m.eval(), quiet.eval()
    torch.testing.assert_close(m(x), quiet(x), rtol=0, atol=0)


# -- gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", NORM_MODELS)
def test_gradcheck(name, mode):
    torch.manual_seed(0)
    m = make(name, hidden_size=3).double()
    x = rand_x(B=4, T=3, dtype=torch.float64)
    if mode == "eval":  # population statistics from a few training batches
        for s in range(2):
            m(rand_x(B=4, T=3, seed=s + 1, dtype=torch.float64))
        m.eval()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x.requires_grad_()

    def f(inp, *ps):
        return functional_call(m, dict(zip(names, ps)), (inp,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_gradient_flow_probe_runs_on_every_norm_model():
    task = tasks.create("adding", T=6, n_val=8, n_test=8)
    batch = next(task.eval_batches("val", 8, torch.device("cpu")))
    for name in NORM_MODELS:
        torch.manual_seed(0)
        m = make(name)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        flow = diagnostics.gradient_flow(m, task, batch)
        assert flow.shape == (6,) and torch.isfinite(flow).all() and (flow > 0).all(), name
        for k, v in m.state_dict().items():  # the probe runs on a copy
            assert torch.equal(v, before[k]), (name, k)


# -- every registered model ---------------------------------------------------------

@pytest.mark.parametrize("task_name,args", [("adding", dict(T=6)), ("copy", dict(T=3, n_copy=2))])
@pytest.mark.parametrize("name", baselines.names())
def test_every_registered_model_trains_a_step(name, task_name, args):
    torch.manual_seed(0)
    task = tasks.create(task_name, n_val=4, n_test=4, **args)
    model = baselines.create(name, output_size=task.output_size, input_size=task.input_size,
                             vocab_size=task.vocab_size, target=task.target, hidden_size=4)
    model.train()
    batch = task.train_batch(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    out = model(batch.x, batch.lengths)
    assert torch.isfinite(out).all()
    loss = task.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch.x, batch.lengths)).all()


def test_bn_profile_sweeps_every_variant_and_the_ablation_axes():
    from suite.profiles import build_specs

    specs = build_specs(profile="bn", device="cpu")
    models = {s.model for s in specs}
    assert set(NORM_MODELS) | {"rnn", "gru", "lstm"} <= models
    swept = {k: {s.model_args[k] for s in specs if k in s.model_args}
             for k in ("norm_at", "norm_stats", "norm_gamma", "norm_eval", "relu_in_affine")}
    assert swept["norm_at"] >= {"input", "recurrent", "both", "output"}
    assert swept["norm_stats"] == {"per_step", "shared"}
    assert swept["norm_gamma"] >= {0.1, 1.0}
    assert swept["norm_eval"] == {"population", "batch"}
    assert swept["relu_in_affine"] == {False, True}
    assert len({s.run_id for s in specs}) == len(specs)


@pytest.mark.parametrize("kind,stats,masked,affine", [
    ("batch", "per_step", False, True), ("batch", "shared", False, True), ("batch", "per_step", True, True),
    ("layer", "per_step", False, True), ("batch", "per_step", False, False), ("layer", "per_step", False, False)])
def test_seq_shift_equals_adding_it_after(kind, stats, masked, affine):
    """SeqNorm.seq(a, shift=b) (b inside the norm's β where it can) is seq(a) + b: output,
    gradients of a, γ, β and b, running statistics, in training and in evaluation."""
    import copy

    torch.manual_seed(0)
    ref = SeqNorm(5, kind, stats=stats).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    fused = copy.deepcopy(ref)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool) if masked else None
    for training in (True, False):
        ref.train(training), fused.train(training)
        a = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, requires_grad=True)
        want = ref.seq(a, mask, affine) + b
        got = fused.seq(a, mask, affine, shift=b)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        params = [a, b] + ([ref.weight, ref.bias] if affine else [])
        fparams = [a, b] + ([fused.weight, fused.bias] if affine else [])
        for x, y in zip(torch.autograd.grad((got * g).sum(), fparams), torch.autograd.grad((want * g).sum(), params)):
            torch.testing.assert_close(x, y)
    for (k, x), y in zip(ref.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(y, x, msg=k)


def test_batch_statistics_of_one_sample_in_evaluation():
    """eval_stats="batch" with a batch of one takes the path that handles one sample, as
    training does, instead of F.batch_norm's error."""
    norm = SeqNorm(3, eval_stats="batch").eval()
    a = torch.randn(1, 4, 3)
    out = norm.seq(a)
    assert out.shape == a.shape and torch.isfinite(out).all()
    assert torch.isfinite(norm.step(a[:, 0], 0)).all()


def test_running_statistics_of_full_batches_take_the_short_update_with_the_same_values(monkeypatch):
    """Rows that all come from full batches of two or more are folded in with two
    in-place lerps; the values are those of the general masked update, bit for bit.
    A batch of one (rows left as they are) and mixed batch sizes take the general path."""
    torch.manual_seed(0)
    short, general = SeqNorm(5), SeqNorm(5)
    for norm in (short, general):
        norm._grow(4)
        norm.running_mean.copy_(torch.linspace(-1, 1, 20).view(4, 5))
        norm.running_var.copy_(torch.linspace(0.5, 2, 20).view(4, 5))
    parts = [(torch.randn(3, 5), torch.rand(3, 5)), (torch.randn(1, 5), torch.rand(1, 5))]
    for mean, var in parts:
        short.add_step_stats(mean, var, 7)
    calls = []
    monkeypatch.setattr(SeqNorm, "_update", lambda self, *a, **k: calls.append(a))
    short.flush()
    assert calls == []  # the short path
    monkeypatch.undo()
    mean, var = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    general._update(mean, var, mean.new_full((4, 1), 7.0))
    assert torch.equal(short.running_mean, general.running_mean)
    assert torch.equal(short.running_var, general.running_var)

    before = short.running_mean.clone()
    short.add_step_stats(torch.randn(4, 5), torch.rand(4, 5), 1)  # batch of one: no update
    short.flush()
    assert torch.equal(short.running_mean, before)
    short.add_step_stats(torch.randn(1, 5), torch.rand(1, 5), 1)
    short.add_step_stats(torch.randn(1, 5), torch.rand(1, 5), 3)  # mixed: general path
    monkeypatch.setattr(SeqNorm, "_update", lambda self, *a, **k: calls.append(a))
    short.flush()
    assert len(calls) == 1 and calls[0][2].view(-1).tolist() == [1.0, 3.0]


@pytest.mark.parametrize("name", BN_MODELS)
def test_h0_noise_keeps_gradients_finite_where_every_sequence_starts_blank(name):
    """MNIST's first rows are blank in every image, so W_x x and W_h h have zero batch
    variance at those steps and each multiplies the backward signal by γ/√eps (~32):
    Cooijmans et al. add noise (std 0.1) to h0 for this, and the MNIST profiles do for
    every bn-* model. With it, fast path and reference loop give finite gradients."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 100, 1)
    x[:, 50:] = torch.rand(16, 50, 1, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    for fast in (True, False):
        torch.manual_seed(0)
        m = baselines.create(name, input_size=1, output_size=10, hidden_size=16, h0_noise=0.1)
        baselines.set_fast_path(m, fast)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        grads = torch.autograd.grad(loss, list(m.parameters()))
        assert all(torch.isfinite(t).all() for t in grads), (name, fast)


def test_mnist_profiles_give_h0_noise_where_the_recurrence_has_batch_norm():
    from suite.profiles import build_specs

    noisy = {"bn-rnn", "bn-lstm", "bn-gru"}  # per-step batch norm of W_h h
    for profile in ("mnist", "nightly"):
        specs = [s for s in build_specs(profile=profile, device="cpu") if s.task.endswith("mnist")]
        assert {s.model for s in specs} >= set(BN_MODELS) | {"lstm", "rnn", "ln-lstm"}
        for s in specs:
            assert s.model_args.get("h0_noise", 0.0) == (0.1 if s.model in noisy else 0.0), (profile, s.model)


INERT = [("gru", {"nonlinearity": "relu"}), ("lstm-loop", {"nonlinearity": "relu"}),
         ("rnn", {"forget_bias": 2.0}), ("gru-loop", {"forget_bias": 2.0}), ("bn-gru", {"forget_bias": 2.0}),
         ("ln-lstm", {"norm_stats": "shared", "norm_eval": "batch", "norm_momentum": 0.5}),
         ("ln-rnn", {"norm_stats": "shared", "norm_momentum": 0.5}),
         ("bn-gru", {"norm_eval": "batch", "norm_momentum": 0.5}),
         ("bn-lstm", {"norm": "none", "norm_gamma": 0.5, "norm_eps": 0.1, "norm_at": "input", "norm_cell": False,
                      "norm_stats": "shared", "norm_eval": "batch", "norm_momentum": 0.5}),
         ("bn-rnn-seed", {"norm": "none", "norm_gamma": 0.5, "relu_in_affine": True}),
         ("bn-rnn-seed", {"norm_at": "both", "impl": "loop", "relu_in_affine": True})]


@pytest.mark.parametrize("name,values", INERT)
def test_switches_that_change_nothing_resolve_to_their_defaults(name, values):
    """A switch the configuration ignores is reset by ``resolve`` (one run id, not a sham
    ablation); built as given, bypassing the reset, the model computes exactly what the
    resolved one does, in training and evaluation, so nothing that matters is reset."""
    from baselines.registry import MODELS
    from baselines.models import RecurrentModel

    keep = {k: v for k, v in values.items() if k in ("norm", "norm_at", "impl", "norm_eval")}  # those that act
    resolved = baselines.resolve(name, **values)
    assert resolved == baselines.resolve(name, **keep)
    preset = MODELS.get(name)
    cls = preset.config_cls or baselines.ModelConfig
    raw = cls(**{**preset.values, **values})
    assert any(getattr(raw, k) != resolved[k] for k in values)  # the reset did something
    x = rand_x(B=8, T=6)
    outs = []
    for cfg in (raw, cls(**resolved)):
        torch.manual_seed(0)
        m = (preset.builder or RecurrentModel)(cfg, output_size=1, input_size=2)
        y = m(x)
        grads = torch.autograd.grad(y.sum(), list(m.parameters()))
        m.eval()
        outs.append((y, grads, m(x)))
    (y0, g0, e0), (y1, g1, e1) = outs
    assert torch.equal(y0, y1) and torch.equal(e0, e1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_momentum_under_adam_is_not_part_of_the_run():
    from suite.spec import make_spec

    spec = lambda **train: make_spec("adding", {}, "lstm", {}, train, 0, "cpu")  # noqa: E731
    assert spec(momentum=0.9).run_id == spec().run_id and spec(momentum=0.9).train["momentum"] == 0.0
    assert spec(optimizer="rmsprop", momentum=0.9).run_id != spec(optimizer="rmsprop").run_id


@pytest.mark.parametrize("fast", [True, False])
def test_recalibration_averages_each_row_over_the_batches_that_reach_it(fast):
    """Rows a shorter or padded batch does not reach are averaged over the batches that
    do (with 1/count of all batches, a row first reached by the second batch was half
    the stale running average); a row no batch reaches keeps its running average. On
    the fast path and on the reference loop (train.fast_path=false), whose norms update
    their rows one step at a time."""
    torch.manual_seed(0)
    model = make("bn-lstm")
    model.core.fast = fast
    model.train()
    model(rand_x(B=8, T=9, seed=5))  # running statistics for 9 steps
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    batches = [(rand_x(B=6, T=3, seed=1), None), (rand_x(B=6, T=5, seed=2), None),
               (rand_x(B=6, T=7, seed=3), torch.tensor([7, 6, 6, 2, 2, 1]))]  # steps 6: one sample, not a row
    alone = []  # each batch's own statistics: the rows of a fresh copy after it, with momentum 1
    for x, lengths in batches:
        m = copy.deepcopy(model)
        for n in norms(m):
            n.momentum, n.running_mean, n.running_var = 1.0, n.running_mean[:0], n.running_var[:0]
        m.recalibrate([(x, lengths)])
        alone.append({k: v for k, v in m.state_dict().items() if k in before})
    probe = copy.deepcopy(model)
    probe.recalibrate(batches[:1])
    assert probe.core.last_path.startswith("scan") == fast, probe.core.last_path
    assert model.recalibrate(batches) == 3
    after = model.state_dict()
    for key, old in before.items():
        reached = [a[key] for a in alone]
        assert [len(r) for r in reached] == [3, 5, 6]
        for row in range(len(old)):
            got = [r[row] for r in reached if len(r) > row]
            want = torch.stack(got).mean(0) if got else old[row]
            torch.testing.assert_close(after[key][row], want, msg=f"{key} row {row}")


def test_h0_noise_has_its_std_on_h0_and_leaves_c0_zero():
    torch.manual_seed(0)
    m = baselines.create("bn-lstm", input_size=2, output_size=1, hidden_size=5, h0_noise=0.3).train()
    h0, c0 = m.initial_state(torch.zeros(4096, 3, 2))
    assert h0.shape == (1, 4096, 5) and float(h0.std()) == pytest.approx(0.3, rel=0.03)
    assert torch.equal(c0, torch.zeros_like(c0))


def test_cudnn_cannot_normalize_c_t():
    with pytest.raises(UserError, match="impl=cudnn cannot normalize"):
        baselines.resolve("bn-lstm", impl="cudnn", norm_at="output", norm_cell=True)
