# tideline — every target bootstraps what it needs (a venv in .venv) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_REGISTRY ?= file://$(CURDIR)/.tideline/demo-registry

.PHONY: install test test-fast demo bench lint clean help

help:
	@echo "make test   - create .venv, install tideline with test extras, run the whole test suite"
	@echo "make demo   - run one full retraining cycle on the embedded default (synthetic market, local registry)"
	@echo "make bench  - run the benchmarks in bench/ and write bench/results.json + bench/RESULTS.md"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tideline needs Python >= 3.11"' \
		|| { echo "error: Python >= 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/tideline --registry $(DEMO_REGISTRY) cycle --synthetic --symbols 8 --bars 3000 --seed 7

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf .tideline .pytest_cache build *.egg-info src/*.egg-info
