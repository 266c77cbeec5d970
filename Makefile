# automaster: `make demo` runs the demo, `make test` runs the tests, `make bench` a short benchmark (each installs
# first into .venv); `make clean` removes what they wrote (results/, mlflow.db, mlruns/), not .venv.
# One command retrains each model (docs/training.md, "Retraining each model"):
#   make retrain-reference CORPUS=<fma root>            models/reference (demaster, tune, train, evaluate)
#   make retrain-level CORPUS="<fma root> <debian corpus>"  models/level (the level model)
#   make retrain-compressor CORPUS="<corpus> ..."       results/compressor/model (not shipped: BENCHMARKS.md)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

CORPUS ?= ../shared/data/fma_mini

.PHONY: install demo test test-fast bench docs clean retrain-reference retrain-level retrain-compressor

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

retrain-reference: $(STAMP)
	PYTHON=$(abspath $(PY)) bash models/train_reference.sh $(firstword $(CORPUS)) results/reference

retrain-level: $(STAMP)
	PYTHON=$(abspath $(PY)) bash models/train_level.sh $(CORPUS)

retrain-compressor: $(STAMP)
	$(VENV)/bin/automaster train-compressor $(foreach c,$(CORPUS),--corpus $(c)) --out results/compressor \
	  --crops 660 --val-crops 100 --seconds 8 --samples 16 --epochs 30

clean:
	rm -rf results mlflow.db mlruns .pytest_cache
