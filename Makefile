# make repro   the 23-pass 1989 reproduction on the embedded digits (creates .venv if missing)
# make test    the fast test suite (what CI runs); make test-all adds the slow tests
# make lint    ruff's checks and its format check (CI runs it before the tests)
# make ui      the MLflow UI on http://127.0.0.1:5000 over this project's store (PORT=5001 make ui)
VENV ?= .venv
PORT ?= 5000
BIN := $(VENV)/bin
STAMP := $(VENV)/.zipnet-installed

.PHONY: repro test test-all lint bench ui

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/zipnet-train

test: $(STAMP)
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

ui: $(STAMP)
	mkdir -p mlruns
	$(BIN)/mlflow server --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts \
		--host 127.0.0.1 --port $(PORT)
