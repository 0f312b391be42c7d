"""Seed stacking (baselines/stack.py): S seeds trained as one stack end where each
seed trained alone ends: every step's loss, gradient norm and group norms, and the
final weights and running statistics (float64, so only summation order differs)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import baselines
from baselines.stack import SeedStack, stack_problem
from suite.fastpath import EagerTrainStep, StackedTrainStep, make_train_step
from tasks.base import Batch

S, B, T = 3, 5, 7


def models(name, vocab=None, **overrides):
    out = []
    for seed in range(S):
        torch.manual_seed(seed)
        kw = dict(vocab_size=vocab, target="every") if vocab else dict(input_size=2)
        out.append(baselines.create(name, output_size=3, hidden_size=6, **kw, **overrides).double())
    return out


def batches(steps, vocab=None, every=False):
    g = torch.Generator().manual_seed(11)
    for _ in range(steps):
        per_seed = []
        for _ in range(S):
            x = (torch.randint(0, vocab, (B, T), generator=g) if vocab
                 else torch.rand(B, T, 2, generator=g, dtype=torch.float64))
            y = torch.randint(0, 3, (B, T) if every else (B,), generator=g)
            per_seed.append(Batch(x, y))
        yield per_seed


def loss_fn(out, b):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), b.y.reshape(-1))


CASES = [("bn-lstm", {}), ("ln-gru", {}), ("bn-rnn", {}), ("irnn-loop", {}), ("bn-rnn-input", {}),
         ("lstm-loop", {"num_layers": 2}), ("bn-gru", {"norm_stats": "shared"}), ("ln-lstm", {}),
         ("bn-lstm", {"norm_eval": "batch"})]


@pytest.mark.parametrize("name,overrides", CASES)
@pytest.mark.parametrize("tokens", [False, True])
def test_stacked_seeds_train_as_they_do_alone(name, overrides, tokens, scan_loops):
    vocab = 9 if tokens else None
    alone = models(name, vocab, **overrides)
    stacked = copy.deepcopy(alone)
    steps_alone = [EagerTrainStep(m, loss_fn, torch.optim.Adam(m.parameters(), lr=3e-2), 0.5) for m in alone]
    stack = SeedStack(stacked)
    step = StackedTrainStep(stack, loss_fn, torch.optim.Adam(stack.parameters(), lr=3e-2), 0.5)
    close = dict(rtol=1e-9, atol=1e-12)
    for per_seed in batches(4, vocab, every=tokens):
        want = [s(b) for s, b in zip(steps_alone, per_seed)]
        got = step(Batch(torch.cat([b.x for b in per_seed]), torch.cat([b.y for b in per_seed])))
        assert len(got) == S
        for w, g in zip(want, got):
            torch.testing.assert_close(g.loss, w.loss, **close)
            torch.testing.assert_close(g.grad_norm, w.grad_norm, **close)
            assert g.groups.keys() == w.groups.keys()
            for k in w.groups:
                torch.testing.assert_close(g.groups[k], w.groups[k], **close)
    assert baselines.recurrence_path(stacked[0]) == scan_loops
    for a, b in zip(alone, stacked):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(y, x, **close, msg=k)
    # evaluation runs on each seed's own model, as alone
    x = next(batches(1, vocab))[0].x
    for a, b in zip(alone, stacked):
        a.eval(), b.eval()
        torch.testing.assert_close(b(x), a(x), **close)


def test_stack_forward_concatenates_the_seeds():
    ms = models("bn-lstm")
    stack = SeedStack(copy.deepcopy(ms))
    xs = [torch.rand(B, T, 2, dtype=torch.float64) for _ in range(S)]
    for m in ms:
        m.eval()
    stack.eval()
    torch.testing.assert_close(stack(torch.cat(xs)), torch.cat([m(x) for m, x in zip(ms, xs)]))


def test_what_cannot_be_stacked_says_why():
    assert "cuDNN" in stack_problem(baselines.create("lstm", input_size=2, output_size=1))
    assert "h0 noise" in stack_problem(baselines.create("bn-lstm", input_size=2, output_size=1, h0_noise=0.1))
    off = baselines.create("bn-rnn", input_size=2, output_size=1)
    baselines.set_fast_path(off, False)
    assert "fast path is off" in stack_problem(off)
    assert stack_problem(baselines.create("bn-rnn", input_size=2, output_size=1)) is None
    with pytest.raises(ValueError, match="cuDNN"):
        SeedStack([baselines.create("lstm", input_size=2, output_size=1)])
    with pytest.raises(ValueError, match="share one configuration"):
        SeedStack([baselines.create("bn-rnn", input_size=2, output_size=1),
                   baselines.create("bn-rnn", input_size=2, output_size=1, hidden_size=5)])
    with pytest.raises(ValueError, match="padded"):
        SeedStack(models("gru-loop"))(torch.rand(S * B, T, 2, dtype=torch.float64), torch.full((S * B,), T))


def test_make_train_step_picks_the_stacked_step_on_cpu():
    stack = SeedStack(models("rnn-loop"))
    step = make_train_step(stack, loss_fn, torch.optim.SGD(stack.parameters(), lr=0.1), 1.0,
                           device=torch.device("cpu"))
    assert isinstance(step, StackedTrainStep)
