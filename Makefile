# `make run` trains the heart recipe on the CPU; `make test` runs the tests (`make test-matrix`: the whole
# composition matrix); `make bench` runs the benchmark (with the `bench` extra, PyTorch Lightning). All create
# .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/heart
BENCH_ARGS ?= --out benchmarks/results-cpu.md

.PHONY: run test test-matrix bench venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,tensorboard,hf,finetune,metrics]'
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,tensorboard,hf,finetune,metrics,bench]'
	touch $@

run: venv
	$(BIN)/trainwright train recipes/heart.yaml --run-dir $(RUN_DIR)

test: venv
	$(BIN)/python -m pytest -q

# Every cell of the composition matrix (make test runs a fixed cover of it; tests/test_matrix.py).
test-matrix: venv
	TRAINWRIGHT_MATRIX=full $(BIN)/python -m pytest -q tests/test_matrix.py

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
