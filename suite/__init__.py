"""Orchestration: run specs and profiles, the training runner, metrics, store, executors, CLI."""

__version__ = "0.1.0"
# Bumped when a change alters training results for the same spec: it is part of
# every run's identity, so a store never mixes numbers from incompatible code.
RESULTS_VERSION = "2"
