"""Published numbers (ANCHORS.md) and how runs in the store are matched to them.

Each entry names the paper's model and task, the registry models and task that
correspond, the metric (the report's summary column and a scale to the paper's
unit) and the conditions under which our number is comparable: a run on a
subset, a shorter window or row-by-row pixels is still shown, with the reason it
is not the paper's setting. Qualitative claims (the LSTM on long adding and copy
tasks) are shown with a check on our runs instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

COOIJMANS = "Cooijmans et al., Recurrent Batch Normalization (ICLR 2017)"
COOIJMANS_T1 = "cited in Cooijmans et al. 2017, Table 1"
ARJOVSKY = "Arjovsky et al., Unitary Evolution Recurrent Neural Networks (ICML 2016)"
LI = "Li et al., Independently Recurrent Neural Network (CVPR 2018)"

LSTM = ("lstm", "lstm-loop")
RNN = ("rnn", "rnn-loop")
IRNN = ("irnn", "irnn-loop")
BN_LSTM = ("bn-lstm",)
BEATS = 0.95  # copy: a loss ratio below this is read as beating the memoryless baseline


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
    comparable: dict = field(default_factory=dict)  # task arguments of the paper's setting
    check: Callable[[float], bool] | None = None  # qualitative claims: does our mean agree?
    claim: str = ""


def _mnist(task: str, paper_task: str, values: dict[tuple[str, tuple[str, ...], str], float]) -> list[Published]:
    return [Published(pm, models, task, paper_task, "test_acc", "test accuracy %", v, src, scale=100.0,
                      comparable={"pixels_per_step": 1, "n_train": 0, "n_test": 0})
            for (pm, models, src), v in values.items()]


PUBLISHED: list[Published] = [
    *_mnist("pixel-mnist", "sequential MNIST", {
        ("LSTM", LSTM, COOIJMANS): 98.9, ("BN-LSTM", BN_LSTM, COOIJMANS): 99.0,
        ("tanh RNN", RNN, COOIJMANS_T1): 35.0, ("iRNN", IRNN, COOIJMANS_T1): 97.0,
        ("LSTM", LSTM, ARJOVSKY): 98.2}),
    *_mnist("permuted-mnist", "permuted MNIST", {
        ("LSTM", LSTM, COOIJMANS): 90.2, ("BN-LSTM", BN_LSTM, COOIJMANS): 95.4,
        ("tanh RNN", RNN, COOIJMANS_T1): 35.0, ("iRNN", IRNN, COOIJMANS_T1): 82.0,
        ("LSTM", LSTM, ARJOVSKY): 88.0}),
    *[Published(name, models, "char-lm", f"{corpus} characters", "test_bpc", "test bpc", v, COOIJMANS,
                when={"corpus": corpus}, comparable={"window": window, "max_chars": 0})
      for corpus, window, rows in (("ptb", 100, (("LSTM", LSTM, 1.38), ("BN-LSTM", BN_LSTM, 1.32))),
                                   ("text8", 180, (("LSTM", LSTM, 1.43), ("BN-LSTM", BN_LSTM, 1.36))))
      for name, models, v in rows],
    Published("LSTM", LSTM, "adding", "adding, T = 1000", "test_mse", "test MSE", None, LI,
              when={"T": 1000}, check=lambda mse: mse > 0.1, claim="MSE no longer decreases (stays near chance 0.167)"),
    Published("LSTM", LSTM, "copy", "copy memory, T = 100", "test_loss_ratio", "loss / memoryless baseline", None,
              ARJOVSKY, when={"T": 100}, comparable={"n_copy": 10, "variable_delay": False},
              check=lambda ratio: ratio < BEATS, claim=f"beats the memoryless baseline (loss ratio < {BEATS})"),
    *[Published("LSTM", LSTM, "copy", f"copy memory, T = {T}", "test_loss_ratio", "loss / memoryless baseline",
                None, ARJOVSKY, when={"T": T}, comparable={"n_copy": 10, "variable_delay": False},
                check=lambda ratio: ratio >= BEATS, claim=f"stays at the memoryless baseline (loss ratio ≥ {BEATS})")
      for T in (200, 300, 500)],
]


def matches(entry: Published, task: str, model: str, args: dict) -> bool:
    return entry.task == task and model in entry.models and all(args.get(k) == v for k, v in entry.when.items())


def differences(entry: Published, args: dict) -> list[str]:
    """How a run's task arguments differ from the paper's setting (empty: comparable)."""
    return [f"{k}={args.get(k)} (paper: {v})" for k, v in entry.comparable.items() if args.get(k) != v]


def tasks_with_numbers() -> list[str]:
    return sorted({e.task for e in PUBLISHED})
