# The two set-up commands of the README: `make demo` and `make test`. Both build the venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	# An existing venv is kept (its interpreter too): only the project's dependencies change.
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this version is on local disk; anything else downloads several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,train,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamrank demo --seconds 30 --json demo.json

test: $(STAMP)
	.ci/ensure-redis
	$(BIN)/ruff check .
	$(BIN)/mypy schemas models stream bench
	# Two xdist workers; why two, and the cpu-heavy group: tests/conftest.py.
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup

bench: $(STAMP)
	.ci/ensure-redis
	$(BIN)/streamrank bench features --json bench-features.json

clean:
	rm -rf $(VENV) demo.json bench-features.json
