# `make run` trains the heart recipe on the CPU; `make test` runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/heart

.PHONY: run test venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,tensorboard]'
	touch $@

run: venv
	$(BIN)/trainwright train recipes/heart.yaml --run-dir $(RUN_DIR)

test: venv
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
