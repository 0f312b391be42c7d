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
