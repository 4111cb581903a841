# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests: parallel workers (each simulates 8 CPU devices; see tests/conftest.py).
PYTEST_WORKERS ?= 2

.PHONY: demo test venv clean bench train-small middlebury ablations

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch is pinned to the CPU wheel (test extra); install it first so nothing pulls CUDA wheels.
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,vipe,text]"
	touch $(STAMP)

# The bundled small Mirage (weights/small) generates a held-out world with and without memory.
demo: $(STAMP)
	$(PY) -m mirage_jax.demo --weights weights/small --out outputs/demo

# Trains the whole small model (weights/small) from nothing on CPU; rerun to resume.
train-small: $(STAMP)
	$(PY) experiments/train_small.py --workdir runs/small --out weights/small

# The paper's ablations at small scale on the held-out suite (memory on/off, depth, memory policy).
ablations: $(STAMP)
	$(PY) experiments/ablations.py --weights weights/small --out experiments/results/ablations_small

# The Middlebury geometry check of the memory (real data; an experiment).
middlebury: $(STAMP)
	$(PY) experiments/middlebury_check.py --out outputs/middlebury

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=25 tests

bench: $(STAMP)
	$(PY) experiments/bench_memory.py --out experiments/results/bench_memory_cpu.json

clean:
	rm -rf $(VENV) outputs runs .pytest_cache
