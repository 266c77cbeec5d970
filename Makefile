# automaster: `make demo` runs the demo, `make test` runs the tests, `make bench` a short benchmark (each installs
# first into .venv); `make clean` removes what they wrote (results/, mlflow.db, mlruns/), not .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test test-fast bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/automaster demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(PY) bench/quick.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf results mlflow.db mlruns .pytest_cache
