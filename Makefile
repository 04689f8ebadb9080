# Two commands set up everything: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.primage-installed

.PHONY: demo test lint format benchmark clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,seg,nnunet]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/primage demo --output-dir demo-output

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks compare against peers (itk-elastix, nilearn's MNI template) kept out of the
# core install: the `bench` extra brings them.
benchmark: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	@for script in benchmarks/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
