"""Orchestration: run specs and profiles, the training runner, metrics, store, executors, CLI."""

__version__ = "0.1.0"
# Bumped when a change alters training results for the same spec: it is part of
# every run's identity, so a store never mixes numbers from incompatible code. 3:
# ListOps nests max_depth - 1 deep (as LRA), the gradient-flow probe no longer moves
# the random stream of training with h0_noise, adding has n_train. 4: batch norm keeps
# no row for a padded step with one sample, recalibration averages each row over the
# batches that reach it, char-lm evaluation gives each window its steps' statistics,
# the probe of a cuDNN model builds its twin without moving the random stream. 5: the
# training settings gained rmsprop_alpha and eps, permuted-mnist perm_kind, char-lm
# test_streams (every run id changes; the defaults train as before); the gradient-flow
# probe aligns a padded batch at each sequence's end; summaries record the chance level
# and the step where start-up ended.
RESULTS_VERSION = "5"
