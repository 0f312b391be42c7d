# Two entry points (see README): `make smoke` runs the smoke profile and renders the
# report; `make test` runs the tests. Both set up .venv first. torch is installed
# first and pinned: on these machines torch==2.13.0 is a local CPU build, while a
# bare requirement would pull a multi-GB CUDA build. The ray extra is installed so the
# Ray executor's tests run too (they skip where Ray is missing). Setup also builds the
# scan path's compiled CPU loops (baselines/scan_cpp.py, ~30 s once per machine), so
# that the first run does not; where they cannot be built, a warning says why.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup smoke test test-all clean

$(BIN)/rnnbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	$(BIN)/python -c "from baselines import scan_cpp; scan_cpp.load()"
	touch $@

setup: $(BIN)/rnnbench

smoke: setup
	$(BIN)/rnnbench run --profile smoke
	$(BIN)/rnnbench report

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf results .pytest_cache
