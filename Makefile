# Deep Learning for Medical Imaging — build, release and test the course.
#   make        set up .venv, build the executed book, release the labs
#   make test   run the whole test suite (builds what it needs first)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One BLAS/OpenMP thread: small CNNs train several times faster on 2 cores.
export OMP_NUM_THREADS ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

BOOK_DIR ?= book
BOOK_SRC := $(shell find $(BOOK_DIR) -maxdepth 1 -type f \( -name '*.md' -o -name '*.yml' -o -name '*.bib' -o -name '*.png' \)) \
            $(shell find src/dlmi -name '*.py')
LAB_SRC := $(shell find solutions autograder -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: all venv data book labs check test bench bench-recipes clean
all: venv book labs

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# MedMNIST files the book and labs load, downloaded with retries and MD5-checked into
# $DLMI_DATA_DIR (default ~/.medmnist); files already there are verified, not fetched again.
data: venv
	$(BIN)/dlmi-data fetch --book --labs

# Strict: any cell error or Sphinx warning fails the build; --all re-reads unchanged pages.
book: $(BOOK_DIR)/_build/html/index.html
$(BOOK_DIR)/_build/html/index.html: $(VENV)/.installed $(BOOK_SRC)
	$(BIN)/jupyter-book build $(BOOK_DIR) --all -W --keep-going
	touch $@

labs: labs/.released
labs/.released: $(VENV)/.installed $(LAB_SRC)
	$(BIN)/dlmi-grader release --all
	touch $@

check: labs
	$(BIN)/dlmi-grader check --all

test: book labs
	$(BIN)/python -m pytest

bench: labs
	$(BIN)/python autograder/benchmark.py

# The reference training recipe on one MedMNIST flag per task type (real data when present).
bench-recipes: venv
	$(BIN)/python -m dlmi.recipes

clean:
	rm -rf book/_build labs/.released
