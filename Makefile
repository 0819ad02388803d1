# `make run` trains the heart recipe on the CPU; `make lint` runs ruff and mypy (settings in pyproject.toml);
# `make test` runs lint, then the tests (`make test-matrix`: the whole composition matrix); `make bench` runs the
# benchmark (with the `bench` extra, PyTorch Lightning). All create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/heart
BENCH_ARGS ?= --out benchmarks/results-cpu.md

.PHONY: run lint test test-matrix bench venv clean-venv

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

# The files and rules are in pyproject.toml ([tool.ruff], [tool.mypy]); `ruff check --fix` sorts imports.
lint: venv
	@$(BIN)/ruff check || { echo "lint: ruff found the problems above (ruff check --fix mends import order)" >&2; exit 1; }
	@$(BIN)/mypy || { echo "lint: mypy found the type errors above" >&2; exit 1; }

# Lint first: a green `make test` is a green CI (.ci/run runs it), and lint takes seconds.
test: lint
	$(BIN)/python -m pytest -q

# Every cell of the composition matrix (make test runs a fixed cover of it; tests/test_matrix.py).
test-matrix: venv
	TRAINWRIGHT_MATRIX=full $(BIN)/python -m pytest -q tests/test_matrix.py

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
