"""The training runner: determinism, learning, early stop, best checkpoint, divergence."""

import math

import pytest
import torch

import tasks
from suite.profiles import build_specs
from suite.runner import train_one


def _spec(model="gru", **train):
    base = dict(max_steps=30, eval_every=10, batch_size=16, eval_batch_size=200, lr=1e-2)
    base.update(train)
    (spec,) = build_specs(task=["adding"], model=[model], task_args={"T": 8, "n_val": 100, "n_test": 100},
                          model_args={"hidden_size": 8}, train=base, seeds="0", device="cpu")
    return spec


def _collect(spec):
    rows, diags = [], []
    res = train_one(spec, lambda m, d: (rows.extend(m), diags.extend(d)))
    return res, rows, diags


def test_same_spec_on_cpu_is_bit_identical():
    spec = _spec()
    a, rows_a, diag_a = _collect(spec)
    b, rows_b, diag_b = _collect(spec)
    strip = lambda rows: [r for r in rows if r[2] != "wall_time"]
    assert strip(rows_a) == strip(rows_b)
    assert diag_a == diag_b
    keys = [k for k in a.summary if k.startswith("test_") or k in ("best_val", "best_step")]
    assert {k: a.summary[k] for k in keys} == {k: b.summary[k] for k in keys}


def test_different_seeds_differ():
    s0 = _spec()
    s1 = s0.__class__(**{**s0.__dict__, "seed": 1})
    a, _, _ = _collect(s0)
    b, _, _ = _collect(s1)
    assert a.summary["test_mse"] != b.summary["test_mse"]


def test_metrics_recorded_and_test_uses_best_validation_checkpoint():
    res, rows, diags = _collect(_spec(early_stop=False))
    assert res.status == "done"
    train_loss = [r for r in rows if r[1] == "train" and r[2] == "loss"]
    assert [r[0] for r in train_loss] == list(range(1, 31))
    names = {r[2] for r in rows if r[1] == "train"}
    assert {"loss", "grad_norm", "clipped", "wall_time", "grad_norm/recurrent", "grad_norm/head"} <= names
    val = {r[0]: r[3] for r in rows if r[1] == "val" and r[2] == "mse"}
    assert sorted(val) == [10, 20, 30]
    best_step = min(val, key=val.get)
    assert res.summary["best_step"] == best_step and res.summary["best_val"] == val[best_step]
    test_rows = [r for r in rows if r[1] == "test"]
    assert test_rows and all(r[0] == best_step for r in test_rows)
    # gradient-flow profiles at the start and the end, one value per time step
    steps = sorted({d[0] for d in diags if d[1] == "grad_flow"})
    assert steps == [0, 30] and sum(1 for d in diags if d[0] == 0) == 8
    assert res.summary["samples_per_s"] > 0 and res.summary["timesteps_per_s"] == pytest.approx(
        res.summary["samples_per_s"] * 8)
    s = res.summary  # the eager step's first call is start-up, timed apart from the steady rate
    assert s["warmup_steps"] == 1 and 0 < s["warmup_s"] < s["train_time_s"]
    assert s["step_ms"] == pytest.approx(1000 * (s["train_time_s"] - s["warmup_s"]) / 29)
    assert res.env["device"] == "cpu" and res.env["torch"] == torch.__version__


def test_clipping_and_grad_norm_is_before_clipping():
    res, rows, _ = _collect(_spec(clip=1e-4, max_steps=5, eval_every=5))
    norms = [r[3] for r in rows if r[2] == "grad_norm"]
    clipped = [r[3] for r in rows if r[2] == "clipped"]
    assert all(n > 1e-4 for n in norms) and all(c == 1.0 for c in clipped)


def test_divergence_ends_run_as_diverged():
    (spec,) = build_specs(task=["adding"], model=["irnn"], task_args={"T": 20, "n_val": 50, "n_test": 50},
                          model_args={"hidden_size": 8},
                          train={"optimizer": "sgd", "lr": 1e12, "clip": None, "max_steps": 50,
                                 "eval_every": 25, "batch_size": 8}, seeds="0", device="cpu")
    res, rows, _ = _collect(spec)
    assert res.status == "diverged"
    step = res.summary["diverged_step"]
    assert 1 <= step <= 25 and "step" in res.reason
    bad = [r for r in rows if r[0] == step and r[2] in ("loss", "grad_norm")]
    assert any(not math.isfinite(r[3]) for r in bad)


def test_early_stop_when_solved():
    (spec,) = build_specs(task=["adding"], model=["lstm"], task_args={"T": 4, "n_val": 200, "n_test": 200},
                          model_args={"hidden_size": 16},
                          train={"max_steps": 3000, "eval_every": 50, "lr": 1e-2, "batch_size": 32},
                          seeds="0", device="cpu")
    res, _, _ = _collect(spec)
    assert res.summary["solved"] and res.summary["steps"] < 3000
    assert res.summary["solved_step"] == res.summary["steps"] and res.summary["best_val"] <= 0.01


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("model", ["gru", "lstm-loop", "bn-lstm"])
def test_precisions_run_on_cpu(precision, model):
    res, _, _ = _collect(_spec(model, precision=precision, max_steps=10))
    assert res.status == "done" and math.isfinite(res.summary["test_mse"])


@pytest.mark.parametrize("model", ["bn-lstm", "bn-rnn-seed"])
def test_gradient_flow_probes_leave_training_as_it_is(model):
    """A probe's twin runs in training mode and draws h_0's noise (h0_noise, Cooijmans et
    al.'s recipe) as the model does, from a copy of the random state: training with
    probes every 5 steps is bit for bit training without them. bn-rnn-seed's twin swaps
    its cuDNN core for a loop core, whose initialisation draws too."""
    def spec(probe_every):
        (s,) = build_specs(task=["adding"], model=[model], task_args={"T": 8, "n_val": 100, "n_test": 100},
                           model_args={"hidden_size": 8, "h0_noise": 0.1},
                           train=dict(max_steps=15, eval_every=15, batch_size=16, eval_batch_size=200, lr=1e-2,
                                      probe_every=probe_every, early_stop=False), seeds="0", device="cpu")
        return s

    probed, rows_a, diags = _collect(spec(5))
    plain, rows_b, _ = _collect(spec(0))
    assert any(d for d in diags)  # the probes ran
    train_loss = lambda rows: [r for r in rows if r[1:3] == ("train", "loss")]  # noqa: E731
    assert train_loss(rows_a) == train_loss(rows_b) and len(train_loss(rows_a)) == 15
    assert probed.summary["test_mse"] == plain.summary["test_mse"]


def _bn_spec(**train):
    base = dict(max_steps=20, eval_every=10, batch_size=16, eval_batch_size=200, lr=1e-2, early_stop=False)
    base.update(train)
    (spec,) = build_specs(task=["adding"], model=["bn-rnn"], task_args={"T": 8, "n_val": 100, "n_test": 100},
                          model_args={"hidden_size": 8}, train=base, seeds="0", device="cpu")
    return spec


def test_batch_norm_recalibration_before_evaluation_is_reproducible():
    with_recal, rows_a, _ = _collect(_bn_spec(recalibrate_batches=5))
    again, _, _ = _collect(_bn_spec(recalibrate_batches=5))
    running, rows_b, _ = _collect(_bn_spec(recalibrate_batches=0))
    assert with_recal.summary["test_mse"] == again.summary["test_mse"]
    # same training (the recalibration batches come from their own generator) ...
    train_loss = lambda rows: [r for r in rows if r[1:3] == ("train", "loss")]  # noqa: E731
    assert train_loss(rows_a) == train_loss(rows_b) and len(train_loss(rows_a)) == 20
    # ... but evaluated with other population statistics
    assert with_recal.summary["test_mse"] != running.summary["test_mse"]


@pytest.mark.parametrize("task,args", [("adding", {"T": 20}), ("copy", {"T": 5, "n_copy": 3})])
def test_divergence_between_logged_steps_is_caught_at_evaluation(task, args):
    """Steps that ``log_every`` does not store are still checked at the next read-back:
    on copy, whose primary metric (accuracy) stays finite where the outputs are NaN, the
    run was recorded done with the NaN model as its best."""
    (spec,) = build_specs(task=[task], model=["irnn"], task_args={**args, "n_val": 50, "n_test": 50},
                          model_args={"hidden_size": 8},
                          train={"optimizer": "sgd", "lr": 1e12, "clip": None, "max_steps": 50,
                                 "eval_every": 25, "batch_size": 8, "log_every": 1000}, seeds="0", device="cpu")
    res, rows, _ = _collect(spec)
    assert not [r for r in rows if r[1:3] == ("train", "loss")]  # nothing logged between evaluations
    assert res.status == "diverged" and res.reason.startswith("non-finite loss or gradient at step ")
    assert res.summary["diverged_step"] < 25 and not [r for r in rows if r[1] == "val"]


def test_a_non_finite_validation_loss_is_divergence(monkeypatch):
    """An accuracy can be finite where the loss is not (argmax of NaN logits)."""
    from suite import runner

    (spec,) = build_specs(task=["copy"], model=["rnn"], task_args={"T": 5, "n_copy": 3, "n_val": 50, "n_test": 50},
                          model_args={"hidden_size": 8}, train={"max_steps": 4, "eval_every": 2, "batch_size": 8},
                          seeds="0", device="cpu")
    evaluate = runner.RunLoop.evaluate
    monkeypatch.setattr(runner.RunLoop, "evaluate",
                        lambda self, split: {**evaluate(self, split), "loss": float("nan")})
    res, _, _ = _collect(spec)
    assert (res.status, res.reason, res.summary["diverged_step"]) == ("diverged", "non-finite validation loss at step 2", 2)


def test_throughput_leaves_start_up_out():
    from suite.runner import throughput

    # 100 steps of batch 10 in 14 s, the first 4 (warm-up and capture) took 5 s; the
    # batches held 10 x 20 sample-steps in start-up, 96 x 10 x 30 after it
    t = throughput(100, 14.0, (0, 0.0), (4, 5.0), 10, (4 * 200, 96 * 300))
    assert t == {"samples_per_s": pytest.approx(96 * 10 / 9.0), "step_ms": pytest.approx(9000 / 96),
                 "timesteps_per_s": pytest.approx(96 * 300 / 9.0), "warmup_steps": 4, "warmup_s": 5.0,
                 "warmup_end_step": 4}
    # resumed at step 50 after 7 s; start-up again for 4 steps (1.5 s)
    t = throughput(100, 12.0, (50, 7.0), (54, 8.5), 10)
    assert t["warmup_steps"] == 4 and t["warmup_s"] == pytest.approx(1.5) and t["warmup_end_step"] == 54
    assert t["step_ms"] == pytest.approx(1000 * 3.5 / 46)
    # ended within its start-up: the whole time, all of it start-up
    t = throughput(3, 2.0, (0, 0.0), None, 10, (3 * 200, 0))
    assert t == {"samples_per_s": pytest.approx(15.0), "step_ms": pytest.approx(2000 / 3),
                 "timesteps_per_s": pytest.approx(300.0), "warmup_steps": 3, "warmup_s": 2.0,
                 "warmup_end_step": 3}


def test_timesteps_per_s_counts_the_steps_batches_hold():
    """A padded task's batch is as long as its longest sequence: timesteps/s counts those
    steps, not the task's longest length times the samples (13x too many on SST-2)."""
    (spec,) = build_specs(task=["listops"], model=["rnn"],
                          task_args={"max_length": 200, "min_length": 20, "n_train": 200, "n_val": 20,
                                     "n_test": 20}, model_args={"hidden_size": 8},
                          train={"max_steps": 12, "eval_every": 12, "batch_size": 4}, seeds="0", device="cpu")
    res, _, _ = _collect(spec)
    s = res.summary
    assert s["timesteps_per_s"] < s["samples_per_s"] * 200
    task = tasks.create("listops", **spec.task_args)
    gen = torch.Generator().manual_seed(0)
    lengths = [task.train_batch(4, gen, torch.device("cpu")).x.shape[1] for _ in range(12)]
    assert max(lengths) < 200 and len(set(lengths)) > 1  # what the check above relies on


def test_plain_cuda_device_gets_an_index(monkeypatch):
    """``--device cuda`` (no index) names the current device: ``torch.cuda.set_device``
    refuses a device without an index (seen on an H100 with torch 2.11: every run of the
    smoke profile failed)."""
    from suite import runner

    seen = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        seen.append(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runner, "set_precision", lambda precision: None)
    (spec,) = build_specs(task=["adding"], model=["lstm"], task_args={"T": 5}, seeds="0", device="cuda")
    assert runner._setup(spec) == torch.device("cuda", 3) and seen == [torch.device("cuda", 3)]
    (spec,) = build_specs(task=["adding"], model=["lstm"], task_args={"T": 5}, seeds="0", device="cuda:1")
    assert runner._setup(spec) == torch.device("cuda", 1)


def test_peak_memory_sets_probes_and_evaluations_aside(monkeypatch):
    """The recorded peak is the training steps': a probe (an explicit loop under autograd)
    or an evaluation that holds more is kept out of it."""
    from suite import runner

    state = {"peak": 0.0}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"] * 2**20)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=10.0))
    peak = runner.TrainingPeak(torch.device("cuda", 0))
    state["peak"] = 50.0  # training
    with peak.aside():
        state["peak"] = 400.0  # a probe
    assert state["peak"] == 10.0  # restarted after it
    state["peak"] = 60.0  # training again
    assert peak.value() == 60.0
    with peak.aside():
        state["peak"] = 900.0
    assert peak.value() == 60.0
    assert runner.TrainingPeak(torch.device("cpu")).value() is None


def test_rmsprop_takes_its_decay_and_epsilon():
    """Cooijmans et al.'s RMSProp averages squared gradients with decay 0.9: one step
    from zero moves a weight by lr / sqrt(1 - alpha) (eps aside); both settings are
    inert (their defaults, one run id) where the optimizer has no use for them."""
    from suite.runner import make_optimizer
    from suite.spec import TrainConfig

    for alpha in (0.9, 0.99):
        w = torch.nn.Parameter(torch.zeros(1))
        opt = make_optimizer(TrainConfig(optimizer="rmsprop", lr=1e-3, rmsprop_alpha=alpha, eps=1e-5), [w])
        w.grad = torch.ones(1)
        opt.step()
        assert math.isclose(-w.item(), 1e-3 / (math.sqrt(1 - alpha) + 1e-5), rel_tol=1e-5)
    adam = _spec(optimizer="adam", rmsprop_alpha=0.9)
    assert adam.train["rmsprop_alpha"] == 0.99 and adam.run_id == _spec(optimizer="adam").run_id
    sgd = _spec(optimizer="sgd", eps=1e-3)
    assert sgd.train["eps"] == 1e-8 and sgd.run_id == _spec(optimizer="sgd").run_id
    assert _spec(optimizer="rmsprop", rmsprop_alpha=0.9).run_id != _spec(optimizer="rmsprop").run_id


def test_test_metrics_are_the_best_validation_weights():
    """The test score is that of the best-validation checkpoint: the same run stopped at
    its best step scores the same (the later weights score otherwise)."""
    full = train_one(_spec(early_stop=False))  # 30 steps, evaluated at 10, 20, 30
    best = full.summary["best_step"]
    assert best < 30, "the check needs a best step before the end"
    stopped = train_one(_spec(early_stop=False, max_steps=best))
    assert full.summary["test_mse"] == stopped.summary["test_mse"]
    last = train_one(_spec(early_stop=False, eval_every=30))  # one evaluation: the last weights
    assert last.summary["test_mse"] != full.summary["test_mse"]


def test_best_follows_each_tasks_direction_and_any_non_finite_step_diverges():
    from suite.runner import _better, _drain

    copy, adding = tasks.create("copy"), tasks.create("adding")
    assert _better(copy, 0.9, 0.5) and not _better(copy, 0.5, 0.9)  # accuracy: higher is better
    assert _better(adding, 0.5, 0.9) and not _better(adding, 0.9, 0.5)  # MSE: lower
    assert _better(copy, 0.1, None) and not _better(copy, float("nan"), None)
    ok, inf = torch.tensor(1.0), torch.tensor(float("inf"))
    pending = [(1, ok, ok, None), (2, ok, inf, None), (3, inf, ok, None)]
    assert _drain(pending, 1.0) == ([], 2)  # a non-finite gradient norm alone diverges
    assert _drain([(1, ok, ok, {})], 1.0)[1] is None
