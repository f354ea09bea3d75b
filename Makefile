# Two commands for a new user (see README): `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-fast test-slow bench clean-store

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The whole story on the embedded defaults: synthetic students, a small tracked run, evaluation,
# reproduction and the comparison verdict, then a 2-fold study on a local Ray cluster, all in the local store
# ./mlflow.db (+ ./mlruns).
demo: setup
	$(BIN)/gakt-data synth --out data/synthetic --students 1000 --skills 20 --seed 7
	$(BIN)/gakt-launch --short_title quickstart --profile quickstart
	$(BIN)/gakt-eval $$($(BIN)/gakt-runs --latest_id)
	$(BIN)/gakt-repro --eval $$($(BIN)/gakt-runs --latest_id)
	$(BIN)/gakt-compare $$($(BIN)/gakt-runs --latest_id)
	$(BIN)/gakt-study launch --short_title quickstudy --profile quickstart --folds 0,1 --seeds 42 --workers 2 --threads_per_run 1
	@echo "Open the MLflow UI on this store: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000"
	@echo "then http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (README: Two commands)"

# Every test: the architecture contracts (import-linter, pyproject.toml), the fast tier, then the slow tier (real
# data, real mlflow server, real `mlflow run`).
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" --durations=5
	$(BIN)/python -m pytest -q -m slow --durations=15

test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" --durations=5

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
