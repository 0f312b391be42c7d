"""Registered model presets: each is a handful of ``ModelConfig`` switch values.

Plain cells on cuDNN modules (``rnn``, ``irnn``, ``gru``, ``lstm``) and the same
cells as explicit time loops (``*-loop``), which give the same outputs and
gradients for the same weights. LSTM presets start the forget gate at bias 1
(Gers et al. 2000, "Learning to Forget"), the recipe the normalized LSTMs use too,
so that comparisons differ only in normalization.
"""

from baselines.registry import register_preset

register_preset("rnn", "tanh RNN (cuDNN)", cell="rnn")
register_preset("irnn", "ReLU RNN with identity recurrent init (Le et al. 2015), cuDNN",
                cell="rnn", nonlinearity="relu", init="identity")
register_preset("gru", "GRU (cuDNN)", cell="gru")
register_preset("lstm", "LSTM, forget bias 1 (cuDNN)", cell="lstm", forget_bias=1.0)
register_preset("rnn-loop", "tanh RNN, explicit time loop", cell="rnn", impl="loop")
register_preset("irnn-loop", "IRNN, explicit time loop", cell="rnn", nonlinearity="relu",
                init="identity", impl="loop")
register_preset("gru-loop", "GRU, explicit time loop", cell="gru", impl="loop")
register_preset("lstm-loop", "LSTM, forget bias 1, explicit time loop", cell="lstm",
                forget_bias=1.0, impl="loop")

# -- normalized cells: presets over NormConfig (baselines/normalized.py) -------------
# Batch-norm presets follow Cooijmans et al. 2017, "Recurrent Batch Normalization":
# γ init 0.1, eps 1e-5, per-step statistics, population statistics at evaluation.
# Layer-norm presets follow Ba et al. 2016, "Layer Normalization": gains init 1.
from baselines.normalized import NormConfig, NormModel  # noqa: E402


def _norm(name: str, description: str, **values) -> None:
    register_preset(name, description, config_cls=NormConfig, builder=NormModel, **values)


_BN = dict(norm="batch", norm_gamma=0.1, norm_stats="per_step", norm_eval="population")
_LN = dict(norm="layer", norm_gamma=1.0)

_norm("bn-rnn", "tanh RNN, BN(W_x x) + BN(W_h h) + b, per-step statistics (Cooijmans et al. 2017)",
      cell="rnn", norm_at="both", **_BN)
_norm("bn-rnn-input", "tanh RNN, BN on W_x x only, statistics over batch and time, γ init 1 "
      "(Laurent et al. 2016)", cell="rnn", norm="batch", norm_at="input", norm_stats="shared",
      norm_gamma=1.0)
_norm("bn-rnn-seed", "tanh RNN, outputs -> BN -> ReLU -> linear -> BN -> ReLU -> head, "
      "statistics over batch and time (the seed document)", cell="rnn", impl="cudnn",
      norm="batch", norm_at="output", out_stack=True, norm_stats="shared", norm_gamma=1.0)
_norm("bn-lstm", "BN-LSTM: BN(W_x x) + BN(W_h h) + b, BN(c_t) before the output tanh, "
      "forget bias 1 (Cooijmans et al. 2017)", cell="lstm", norm_at="both", norm_cell=True,
      forget_bias=1.0, **_BN)
_norm("bn-gru", "GRU with the BN-LSTM recipe on W_x x and W_h h", cell="gru", norm_at="both", **_BN)
_norm("ln-rnn", "tanh RNN, LN(W_x x) + LN(W_h h) + b (Ba et al. 2016)", cell="rnn", norm_at="both", **_LN)
_norm("ln-gru", "GRU, layer norm on W_x x and W_h h (Ba et al. 2016 recipe)", cell="gru",
      norm_at="both", **_LN)
_norm("ln-lstm", "LN-LSTM: LN(W_x x) + LN(W_h h) + b, LN(c_t) before the output tanh, forget bias 1 "
      "(Ba et al. 2016)", cell="lstm", norm_at="both", norm_cell=True, forget_bias=1.0, **_LN)
