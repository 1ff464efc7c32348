# make repro   the 23-pass 1989 reproduction on the embedded digits (creates .venv if missing)
# make test    the fast test suite (what CI runs); make test-all adds the slow tests
# make lint    ruff's checks and its format check (CI runs it before the tests)
# make ui      the MLflow UI on http://127.0.0.1:5000 over this project's store (PORT=5001 make ui);
#              prints the link to the experiment's runs table
# make dashboard  optuna-dashboard on http://127.0.0.1:8080 over the studies' storage (STORAGE=..., DASHBOARD_PORT=...)
# make lock    refresh requirements.lock to the newest releases pyproject.toml allows (then `make test` tests them)
VENV ?= .venv
PORT ?= 5000
DASHBOARD_PORT ?= 8080
TEST_WORKERS ?= 2
STORAGE ?= sqlite:///mlruns/optuna.db
BIN := $(VENV)/bin
STAMP := $(VENV)/.zipnet-installed

.PHONY: repro test test-all lint bench ui dashboard lock

# The locked set: torch's exact CPU build here (the lock leaves torch out, so that it names no
# build), everything else from requirements.lock, then zipnet itself with nothing more.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lock: $(STAMP)
	$(BIN)/pip-compile --quiet --upgrade --extra dev --strip-extras --unsafe-package torch \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

repro: $(STAMP)
	$(BIN)/zipnet-train

# the suite's test files shared between TEST_WORKERS processes (pytest-xdist): most tests wait on
# servers and subprocesses, so two of them keep two cores busy
test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	$(BIN)/pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_tracking.py --passes 1,23 --skip-sweep

ui: $(STAMP)
	$(BIN)/python -m zipnet.tracking.ui --port $(PORT)

dashboard: $(STAMP)
	$(BIN)/optuna-dashboard $(STORAGE) --host 127.0.0.1 --port $(DASHBOARD_PORT)
