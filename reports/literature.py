"""Published numbers (ANCHORS.md) and how runs in the store are matched to them.

Each entry names the paper's model and task, the registry models and task that
correspond, the metric (the report's summary column and a scale to the paper's
unit) and the conditions under which our number is comparable: the task's
setting and, where the paper's recipe is encoded (Cooijmans et al.'s), the model,
the training settings and the number of updates. A run on a subset, a smaller
model or a shorter budget is still shown, with the reasons it is not the paper's
setting. Qualitative claims (the LSTM on long adding and copy tasks) are shown with
a check on our runs instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

COOIJMANS = "Cooijmans et al., Recurrent Batch Normalization (ICLR 2017)"
LE = "Le et al., A Simple Way to Initialize Recurrent Networks of Rectified Linear Units (2015), in Cooijmans et al. 2017, Table 1"
ARJOVSKY = "Arjovsky et al., Unitary Evolution Recurrent Neural Networks (ICML 2016)"
LI = "Li et al., Independently Recurrent Neural Network (CVPR 2018)"

LSTM = ("lstm", "lstm-loop")
RNN = ("rnn", "rnn-loop")
IRNN = ("irnn", "irnn-loop")
BN_LSTM = ("bn-lstm",)
BEATS = 0.95  # copy: a loss ratio below this is read as beating the memoryless baseline

# Cooijmans et al.'s recipes, from the paper and its public code (sequential_mnist.py,
# penntreebank.py and experiments/*.sh of cooijmanstim/recurrent-batch-normalization),
# as this suite's settings. The two MNIST tasks: 100 units, RMSProp (decay 0.9) at 1e-3,
# clipping at 1, batch 100 (their Blocks RMSProp divides by max(rms, 1e-5), which eps
# 1e-5 added to the rms approximates), orthogonal weights with the identity as the candidate's
# recurrent block, 200 epochs of the 50k training images; BN-LSTM with gamma 0.1 and,
# on in-order MNIST only, h0 noise 0.1; permuted MNIST's positions drawn with
# replacement. PTB: 1000 units, Adam 2e-3, batch 64, windows of 100, 50 epochs of the
# ~5.0M training characters; text8: 2000 units, Adam 1e-3, batch 128, windows of 180, 50
# epochs of 90M; all weights orthogonal, the test split scored as one stream.
_MNIST = {"model.hidden_size": 100, "model.num_layers": 1, "model.init": "cooijmans-id",
          "model.forget_bias": 1.0, "train.optimizer": "rmsprop", "train.lr": 1e-3, "train.rmsprop_alpha": 0.9,
          "train.eps": 1e-5, "train.batch_size": 100, "train.clip": 1.0,
          "task.pixels_per_step": 1, "task.n_val": 10_000, "task.n_train": 0, "task.n_test": 0}
_BN = {"model.norm_gamma": 0.1, "model.norm_stats": "per_step", "model.norm_eval": "population"}
_CHARLM = {"model.num_layers": 1, "model.init": "cooijmans", "model.forget_bias": 1.0, "train.optimizer": "adam",
           "train.clip": 1.0, "task.max_chars": 0, "task.test_streams": 1}
_PTB = {**_CHARLM, "model.hidden_size": 1000, "train.lr": 2e-3, "train.batch_size": 64, "task.window": 100}
_TEXT8 = {**_CHARLM, "model.hidden_size": 2000, "train.lr": 1e-3, "train.batch_size": 128, "task.window": 180}
MNIST_STEPS = 200 * 50_000 // 100  # 200 epochs of 500 batches
PTB_STEPS = 50 * 5_000_000 // (100 * 64)  # 50 epochs of ~5.0M characters in windows of 100, batch 64
TEXT8_STEPS = 50 * 90_000_000 // (180 * 128)


@dataclass(frozen=True)
class Published:
    """One published result. ``value`` is in the paper's unit; ``scale`` maps our column to it."""

    paper_model: str
    models: tuple[str, ...]
    task: str
    paper_task: str
    column: str  # summary column of our runs, e.g. test_acc
    unit: str
    value: float | None
    source: str
    scale: float = 1.0
    when: dict = field(default_factory=dict)  # task arguments the run must have to match at all
    # the paper's setting as our settings ('task.T', 'model.hidden_size', 'train.lr', ...)
    comparable: dict = field(default_factory=dict)
    steps: int | None = None  # the paper's training updates, where known
    recipe: bool = True  # False: the source's model and training recipe are not encoded here
    check: Callable[[float], bool] | None = None  # qualitative claims: does our mean agree?
    claim: str = ""


def _mnist(task: str, paper_task: str, values: dict[tuple[str, tuple[str, ...], str], float],
           bn: dict, permuted: bool) -> list[Published]:
    task_only = {k: v for k, v in _MNIST.items() if k.startswith("task.")}
    perm = {"task.perm_kind": "with_replacement"} if permuted else {}
    out = []
    for (pm, models, src), v in values.items():
        ours = src == COOIJMANS
        setting = {**_MNIST, **perm, **(bn if models == BN_LSTM else {})} if ours else task_only
        out.append(Published(pm, models, task, paper_task, "test_acc", "test accuracy %", v, src, scale=100.0,
                             comparable=setting, steps=MNIST_STEPS if ours else None, recipe=ours))
    return out


PUBLISHED: list[Published] = [
    *_mnist("pixel-mnist", "sequential MNIST", {
        ("LSTM", LSTM, COOIJMANS): 98.9, ("BN-LSTM", BN_LSTM, COOIJMANS): 99.0,
        ("tanh RNN", RNN, LE): 35.0, ("iRNN", IRNN, LE): 97.0,
        ("LSTM", LSTM, ARJOVSKY): 98.2}, bn={**_BN, "model.h0_noise": 0.1}, permuted=False),
    *_mnist("permuted-mnist", "permuted MNIST", {
        ("LSTM", LSTM, COOIJMANS): 90.2, ("BN-LSTM", BN_LSTM, COOIJMANS): 95.4,
        ("tanh RNN", RNN, LE): 35.0, ("iRNN", IRNN, LE): 82.0,
        ("LSTM", LSTM, ARJOVSKY): 88.0}, bn={**_BN, "model.h0_noise": 0.0}, permuted=True),
    *[Published(name, models, "char-lm", f"{corpus} characters", "test_bpc", "test bpc", v, COOIJMANS,
                when={"corpus": corpus}, comparable={**recipe, **(_BN if models == BN_LSTM else {})}, steps=steps)
      for corpus, recipe, steps, rows in (
          ("ptb", _PTB, PTB_STEPS, (("LSTM", LSTM, 1.38), ("BN-LSTM", BN_LSTM, 1.32))),
          ("text8", _TEXT8, TEXT8_STEPS, (("LSTM", LSTM, 1.43), ("BN-LSTM", BN_LSTM, 1.36))))
      for name, models, v in rows],
    Published("LSTM", LSTM, "adding", "adding, T = 1000", "test_mse", "test MSE", None, LI, recipe=False,
              when={"T": 1000}, check=lambda mse: mse > 0.1, claim="MSE no longer decreases (stays near chance 0.167)"),
    Published("LSTM", LSTM, "copy", "copy memory, T = 100", "test_loss_ratio", "loss / memoryless baseline", None,
              ARJOVSKY, when={"T": 100}, comparable={"task.n_copy": 10, "task.variable_delay": False}, recipe=False,
              check=lambda ratio: ratio < BEATS, claim=f"beats the memoryless baseline (loss ratio < {BEATS})"),
    *[Published("LSTM", LSTM, "copy", f"copy memory, T = {T}", "test_loss_ratio", "loss / memoryless baseline",
                None, ARJOVSKY, when={"T": T}, comparable={"task.n_copy": 10, "task.variable_delay": False},
                recipe=False, check=lambda ratio: ratio >= BEATS,
                claim=f"stays at the memoryless baseline (loss ratio ≥ {BEATS})")
      for T in (200, 300, 500)],
]


def matches(entry: Published, task: str, model: str, args: dict) -> bool:
    return entry.task == task and model in entry.models and all(args.get(k) == v for k, v in entry.when.items())


def differences(entry: Published, settings: dict, steps: float | None = None) -> list[str]:
    """How a configuration (``reports.data.settings``: 'task.T', 'model.hidden_size', ...)
    differs from the paper's setting, and whether its runs trained fewer updates than the
    paper's (``steps``: their mean; a time budget or early stop ends runs sooner). Empty:
    comparable."""
    out = [f"{k.partition('.')[2]}={settings.get(k)} (paper: {v})"
           for k, v in entry.comparable.items() if settings.get(k) != v]
    if entry.steps is not None and steps is not None and steps < entry.steps:
        out.append(f"trained {steps:,.0f} updates (paper: {entry.steps:,})")
    return out


def tasks_with_numbers() -> list[str]:
    """The tasks with published numbers, each with the settings they are for:
    'adding (T=1000)', 'copy (T=100/200/300/500)', 'pixel-mnist'."""
    out = []
    for task in sorted({e.task for e in PUBLISHED}):
        whens = [e.when for e in PUBLISHED if e.task == task]
        keys = sorted({k for w in whens for k in w})
        values = {k: "/".join(str(v) for v in dict.fromkeys(w[k] for w in whens if k in w)) for k in keys}
        out.append(task + (f" ({', '.join(f'{k}={v}' for k, v in values.items())})" if keys else ""))
    return out
