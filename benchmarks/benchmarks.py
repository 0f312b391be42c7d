"""asv benchmarks: a training step of every registered model at the suite's shapes.

Parametrized over ``baselines.names()`` — every registered model is covered by
construction, and the module refuses to import if the registry and the
parameter list ever disagree (as numpy's ufunc benchmarks do). On CUDA the three
representative shapes are timed (seq-MNIST, adding, char-LM); on CPU the small
shape, the others being skipped (NotImplementedError in setup). CUDA times are
synchronised; warm-up (cuDNN autotune, CUDA-graph capture) happens in ``setup``.

``track_time_vs_lstm`` is the number a user cares about: a training step's time
relative to cuDNN LSTM's on the same shape (the inverse of ``rnnbench bench``'s
throughput ratio: asv counts a larger value as worse, so a time is what it tracks);
``StackedRatio`` tracks it per seed for stacked seeds.
``track_adding_test_mse`` trains a short fixed-seed run so that a change that silently
breaks learning shows as a regression.
"""

import os

import torch

import baselines
from suite import bench

MODELS = baselines.names()
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SHAPES = ["seq-mnist", "adding", "char-lm"] if CUDA else ["small"]
if os.environ.get("RNNBENCH_ASV_SHAPES"):  # e.g. "tiny" to check that every benchmark runs
    SHAPES = os.environ["RNNBENCH_ASV_SHAPES"].split(",")
if os.environ.get("RNNBENCH_ASV_MODELS"):  # e.g. "lstm,bn-lstm" for a quick look
    MODELS = baselines.names(os.environ["RNNBENCH_ASV_MODELS"].split(","))
# A check run at the tiny shape trains only a few steps: it proves the code runs.
LEARN_STEPS = 5 if SHAPES == ["tiny"] else 300

missing = set(baselines.names()) - set(MODELS)
if missing and not os.environ.get("RNNBENCH_ASV_MODELS"):
    raise ImportError(f"models without a benchmark: {sorted(missing)}")


def _sync():
    if CUDA:
        torch.cuda.synchronize()


class TrainStep:
    """Forward + backward + clip + Adam update, as the runner does it."""

    params = (MODELS, SHAPES)
    param_names = ["model", "shape"]
    timeout = 600
    warmup_time = 0.0  # warm-up is explicit in setup

    def setup(self, model, shape):
        self.shape = bench.SHAPES[shape]
        self.batch = bench.make_batch(self.shape, DEVICE)
        self.step = bench.build_step(model, self.shape, DEVICE)
        for _ in range(5):  # autotune, graph capture
            self.step(self.batch)
        _sync()

    def time_train_step(self, model, shape):
        self.step(self.batch)
        _sync()

    def track_peak_cuda_mem_mb(self, model, shape):
        if not CUDA:
            return float("nan")
        torch.cuda.reset_peak_memory_stats()
        self.step(self.batch)
        _sync()
        return torch.cuda.max_memory_allocated() / 2**20

    track_peak_cuda_mem_mb.unit = "MB"


class Ratio:
    """Throughput of each model relative to ``lstm`` on the same shape and device."""

    params = (MODELS, SHAPES)
    param_names = ["model", "shape"]
    timeout = 900

    def track_time_vs_lstm(self, model, shape):
        rows = bench.bench([model], [shape], DEVICE.type, repeats=3)
        return 1.0 / next(r["ratio_to_lstm"] for r in rows if r["model"] == model)

    track_time_vs_lstm.unit = "x lstm time"


class StackedRatio:
    """Per-seed throughput of custom cells with seeds stacked (baselines/stack.py:
    8 per step on CUDA, 4 on the CPU) relative to ``lstm`` trained one seed at a time."""

    params = (["rnn-loop", "bn-rnn", "lstm-loop", "bn-lstm"], SHAPES)
    param_names = ["model", "shape"]
    timeout = 900
    seeds = 8 if CUDA else 4

    def track_time_per_seed_vs_lstm(self, model, shape):
        rows = bench.bench([model], [shape], DEVICE.type, repeats=3, seeds=self.seeds)
        return 1.0 / next(r["ratio_to_lstm"] for r in rows if r["model"] == model)

    track_time_per_seed_vs_lstm.unit = "x lstm time per seed"


class Learning:
    """Test MSE of a short fixed-seed lstm run on adding (lower is better)."""

    timeout = 600

    def track_adding_test_mse(self):
        from suite.profiles import build_specs
        from suite.runner import train_one

        (spec,) = build_specs(task=["adding"], model=["lstm"],
                              task_args={"T": 30, "n_val": 500, "n_test": 2000},
                              model_args={"hidden_size": 32},
                              train={"max_steps": LEARN_STEPS, "lr": 1e-2, "eval_every": 100, "early_stop": False},
                              seeds="0", device=DEVICE.type)
        return train_one(spec).summary["test_mse"]

    track_adding_test_mse.unit = "MSE"
