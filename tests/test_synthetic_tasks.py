"""The adding and copy-memory tasks match their definitions in ANCHORS.md exactly."""

import math

import pytest
import torch

import tasks
from suite.errors import UserError
from tasks.synthetic import BLANK, DELIM


@pytest.mark.parametrize("T", [2, 7, 50, 101])
def test_adding_shapes_mask_and_target(T, gen):
    task = tasks.create("adding", T=T)
    b = task.train_batch(256, gen, torch.device("cpu"))
    assert b.x.shape == (256, T, 2) and b.y.shape == (256, 1)
    values, mask = b.x[..., 0], b.x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert (mask.sum(1) == 2).all() and set(mask.unique().tolist()) <= {0.0, 1.0}
    pos = mask.nonzero()[:, 1].view(256, 2)
    half = T // 2
    assert (pos[:, 0] < half).all() and (pos[:, 1] >= half).all()
    expected = values.gather(1, pos).sum(1, keepdim=True)
    torch.testing.assert_close(b.y, expected)


@pytest.mark.parametrize("T", [9, 50])
def test_adding_marks_are_uniform_over_each_half(T):
    """Each mark takes every position of its half, [0, T//2) and [T//2, T), with equal
    probability (chi-square over 8192 samples)."""
    from scipy import stats as sps

    b = tasks.create("adding", T=T).train_batch(8192, torch.Generator().manual_seed(1), torch.device("cpu"))
    pos = b.x[..., 1].nonzero()[:, 1].view(-1, 2)
    half = T // 2
    for column, lo, hi in ((0, 0, half), (1, half, T)):
        counts = torch.bincount(pos[:, column] - lo, minlength=hi - lo)
        assert len(counts) == hi - lo and (counts > 0).all()  # the first and last position of each half too
        assert sps.chisquare(counts.numpy()).pvalue > 1e-4


def test_adding_declarations():
    task = tasks.create("adding", T=50)
    assert task.input_size == 2 and task.output_size == 1 and task.seq_len == 50
    assert task.target == "last" and task.primary == "mse" and not task.higher_is_better
    assert task.chance == pytest.approx(1 / 6) and task.solved == 0.01


def test_adding_chance_level_is_mse_of_predicting_one(gen):
    """Predicting 1.0 always gives MSE = Var(U1 + U2) = 1/6."""
    task = tasks.create("adding", T=20, n_test=20000)
    const = lambda x, lengths=None: torch.ones(x.shape[0], 1)
    mse = task.evaluate(const, "test", torch.device("cpu"))["mse"]
    assert mse == pytest.approx(task.chance, rel=0.03)


def test_eval_sets_fixed_and_disjoint_across_splits():
    task = tasks.create("adding", T=10, n_val=2500, n_test=40)
    cpu = torch.device("cpu")
    sets = [torch.cat([b.x for b in task.eval_batches("val", bs, cpu)]) for bs in (7, 500, 1000, 4000)]
    assert sets[0].shape[0] == 2500
    for other in sets[1:]:  # the same samples whatever the evaluation batch size
        assert torch.equal(sets[0], other)
    assert max(len(b) for b in task.eval_batches("val", 7, cpu)) == 7
    test = torch.cat([b.x for b in task.eval_batches("test", 100, cpu)])
    assert test.shape[0] == 40 and not torch.equal(sets[0][:5], test[:5])
    again = torch.cat([b.x for b in tasks.create("adding", T=10, n_val=2500).eval_batches("val", 300, cpu)])
    assert torch.equal(sets[0], again)
    other = torch.cat([b.x for b in tasks.create("adding", T=10, n_val=2500, data_seed=1).eval_batches("val", 300, cpu)])
    assert not torch.equal(sets[0], other)


def test_adding_fixed_training_set():
    """n_train > 0 (uRNN's protocol): every training sample is one of the n_train fixed
    samples made from data_seed (split "train", apart from validation and test), the same
    set whatever the run's seed, whose generator picks the samples; n_train = 0 draws
    fresh samples every step."""
    cpu = torch.device("cpu")
    task = tasks.create("adding", T=6, n_train=40)
    x, y = task._train_set(cpu)
    assert x.shape == (40, 6, 2) and torch.equal(y, (x[..., 0] * x[..., 1]).sum(1, keepdim=True))
    batches = [task.train_batch(16, torch.Generator().manual_seed(s), cpu) for s in (0, 0, 1)]
    for b in batches:
        assert b.x.shape == (16, 6, 2) and b.y.shape == (16, 1)
        assert ((b.x[:, None] == x[None]).all(-1).all(-1)).any(1).all()  # each row one of the set
    assert torch.equal(batches[0].x, batches[1].x) and not torch.equal(batches[0].x, batches[2].x)
    drawn = torch.cat([task.train_batch(64, torch.Generator().manual_seed(s), cpu).x for s in range(4)])
    assert torch.unique(drawn, dim=0).shape[0] <= 40
    assert torch.equal(tasks.create("adding", T=6, n_train=40)._train_set(cpu)[0], x)  # fixed by data_seed
    assert not torch.equal(tasks.create("adding", T=6, n_train=40, data_seed=1)._train_set(cpu)[0], x)
    val = torch.cat([b.x for b in task.eval_batches("val", 100, cpu)])
    assert not ((val[:, None] == x[None]).all(-1).all(-1)).any()  # no validation sample in it
    fresh = tasks.create("adding", T=6).train_batch(256, torch.Generator().manual_seed(0), cpu).x
    assert torch.unique(fresh, dim=0).shape[0] == 256


@pytest.mark.parametrize("T,n", [(1, 1), (5, 3), (100, 10)])
def test_copy_layout(T, n, gen):
    task = tasks.create("copy", T=T, n_copy=n)
    b = task.train_batch(64, gen, torch.device("cpu"))
    L = T + 2 * n
    assert task.seq_len == L and b.x.shape == (64, L) and b.y.shape == (64, L)
    data = b.x[:, :n]
    assert (data < 8).all()
    assert (b.x[:, n:n + T - 1] == BLANK).all()
    assert (b.x[:, n + T - 1] == DELIM).all()
    assert (b.x[:, n + T:] == BLANK).all()
    assert (b.y[:, :T + n] == BLANK).all()
    assert torch.equal(b.y[:, T + n:], data)


def test_copy_standard_form_is_T_plus_20():
    task = tasks.create("copy", T=100)
    assert task.seq_len == 120 and task.vocab_size == 10 and task.output_size == 9
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / 120)
    assert task.chance == pytest.approx(1 / 8) and task.higher_is_better


def test_copy_variable_delay(gen):
    T, n = 30, 4
    task = tasks.create("copy", T=T, n_copy=n, variable_delay=True)
    b = task.train_batch(500, gen, torch.device("cpu"))
    delim = (b.x == DELIM).float().argmax(1)
    delays = delim - n + 1
    assert delays.min() >= 1 and delays.max() <= T and len(delays.unique()) > 10
    assert delays.max() == T and delays.min() == 1  # the longest delay, the hardest case, too (500 draws)
    for i in range(20):
        d = int(delim[i])
        assert torch.equal(b.y[i, d + 1:d + 1 + n], b.x[i, :n])
        assert (b.y[i, :d + 1] == BLANK).all() and (b.y[i, d + 1 + n:] == BLANK).all()
        assert (b.x[i, n:d] == BLANK).all() and (b.x[i, d + 1:] == BLANK).all()


def test_copy_memoryless_baseline_loss_and_chance():
    """Blank everywhere, uniform over the 8 data symbols at recall: loss = baseline."""
    task = tasks.create("copy", T=20, n_copy=10, n_test=2000)

    def memoryless(x, lengths=None):
        B, L = x.shape
        logits = torch.full((B, L, 9), -1e9)
        logits[:, :L - 10, BLANK] = 0.0
        logits[:, L - 10:, :8] = 0.0
        return logits

    m = task.evaluate(memoryless, "test", torch.device("cpu"))
    assert m["loss"] == pytest.approx(task.baseline_loss, rel=1e-5)
    assert m["loss_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert m["acc"] == pytest.approx(1 / 8, abs=0.02)  # argmax picks symbol 0: 1/8 of targets


@pytest.mark.parametrize("name,args,needle", [
    ("adding", {"T": 0}, "T=0 is out of range"),
    ("adding", {"T": -5}, "must be >= 2"),
    ("copy", {"n_copy": 0}, "n_copy"),
    ("adding", {"lenght": 5}, "has no parameter 'lenght'; allowed: T"),
    ("adding", {"T": "long"}, "must be int"),
    ("nope", {}, "unknown task 'nope'; choose from: adding, .*copy"),  # more tasks may sit between
])
def test_bad_task_parameters(name, args, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        tasks.create(name, **args)
