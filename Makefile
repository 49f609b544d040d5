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
            $(shell find $(BOOK_DIR)/_ext $(BOOK_DIR)/_assets -maxdepth 1 -type f 2>/dev/null) \
            $(wildcard labs/*/*.ipynb) \
            $(shell find src/dlmi -name '*.py')
LAB_SRC := $(shell find solutions autograder -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: all venv assets notebooks data rehearse book labs check lint test test-install test-grader bench bench-gpu bench-recipes clean
all: venv book labs

# The course with every extra at the exact versions of constraints.txt (pyproject.toml has only
# lower bounds: a student's `pip install` keeps the torch already there).
CONSTRAINTS := constraints.txt
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[all]" -c $(CONSTRAINTS)
	touch $@

# MedMNIST files the book and labs load, downloaded with retries and MD5-checked into
# $DLMI_DATA_DIR (default ~/.medmnist); files already there are verified, not fetched again.
data: venv
	$(BIN)/dlmi-data fetch --book --labs

# Not part of `make test`: the book built with DLMI_DATA=real against full-size FAKE files in
# MedMNIST's format under $(REHEARSE_DIR) (never the real data root); prints each page's time
# and the peak memory, to check a publish fits before it runs.
REHEARSE_DIR ?= /tmp/dlmi-rehearse
rehearse: venv
	$(BIN)/dlmi-data rehearse --root $(REHEARSE_DIR) --book-dir $(BOOK_DIR)

# Browser assets the site serves itself (no CDN) and the browser-test tools, from the exact
# versions in package-lock.json; node_modules/ and book/_assets/vendor/ are not committed.
VENDOR := book/_assets/vendor
assets: $(VENDOR)/.copied
$(VENDOR)/.copied: package.json package-lock.json
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/mathjax/output/chtml/fonts $(VENDOR)/mathjax/input/tex $(VENDOR)/html-manager
	cp node_modules/mathjax/es5/tex-chtml.js $(VENDOR)/mathjax/
	cp -r node_modules/mathjax/es5/output/chtml/fonts/woff-v2 $(VENDOR)/mathjax/output/chtml/fonts/
	cp -r node_modules/mathjax/es5/input/tex/extensions $(VENDOR)/mathjax/input/tex/
	cp node_modules/requirejs/require.js $(VENDOR)/
	cp node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js node_modules/@jupyter-widgets/html-manager/dist/*.woff* $(VENDOR)/html-manager/
	touch $@

# Every chapter as a plain .ipynb in notebooks/ (committed: Colab opens only .ipynb from GitHub);
# a test fails when they lag behind book/*.md.
notebooks: $(VENV)/.installed
	$(BIN)/python book/_ext/notebooks.py

# jupyter-cache keys a page on its code cells only: when the code that draws explorers and
# figures changes, every page must run again.
RENDER_SRC := src/dlmi/widgets.py src/dlmi/display.py $(BOOK_DIR)/_ext/dlmi_book.py
$(BOOK_DIR)/_build/.render-stamp: $(RENDER_SRC)
	rm -rf $(BOOK_DIR)/_build/.jupyter_cache
	mkdir -p $(BOOK_DIR)/_build && touch $@

# Strict: any cell error or Sphinx warning fails the build; --all re-reads unchanged pages.
book: $(BOOK_DIR)/_build/html/index.html
$(BOOK_DIR)/_build/html/index.html: $(VENV)/.installed $(VENDOR)/.copied $(BOOK_SRC) $(BOOK_DIR)/_build/.render-stamp
	$(BIN)/jupyter-book build $(BOOK_DIR) --all -W --keep-going
	touch $@

labs: labs/.released
labs/.released: $(VENV)/.installed $(LAB_SRC)
	$(BIN)/dlmi-grader release --all
	touch $@

check: labs
	$(BIN)/dlmi-grader check --all

# ruff (rules and line length in pyproject.toml [tool.ruff]) and mypy ([tool.mypy]: dlmi and the
# grader), before anything is built. The labs' notebooks are not linted (see [tool.ruff]).
LINT_PATHS := src/dlmi autograder tests book/_ext
lint: venv
	$(BIN)/ruff check --quiet $(LINT_PATHS)
	$(BIN)/mypy

# In parallel: one pytest worker per core; tests that share an expensive fixture (a graded class)
# stay on one worker (tests/conftest.py). TEST_JOBS=0 runs them one after the other.
TEST_JOBS ?= auto
# Two long runs are left to their own targets, which CI runs too: the wrong hand-ins' partial
# credit (a class graded per lab: `make test-grader`) and a real pip install (`make test-install`).
LONG_TESTS := tests/test_grader_credit.py tests/test_install.py
test: lint book labs
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup $(addprefix --ignore=,$(LONG_TESTS))

# Installing the course the student's way into a fresh venv that already has another torch.
test-install: venv
	$(BIN)/python -m pytest -p no:cacheprovider tests/test_install.py

# The tests whose expectations depend on privilege (every grader test: sandbox levels, scratch,
# rules, integrity, intake, outputs, check, workflow), alone: CI runs them again as root
# (`sudo -E make test-grader`) after `make test` as its user, and .ci/run again as an
# unprivileged user. No prerequisites, so nothing is rebuilt as root.
GRADER_TESTS := $(sort $(wildcard tests/test_grader_*.py))
test-grader:
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup -p no:cacheprovider $(GRADER_TESTS)

bench: labs
	$(BIN)/python autograder/benchmark.py

# GPU mode: hand-ins per minute of lab 3 with 1, 2, 4, 8, 16 kernels sharing each GPU.
bench-gpu: labs
	$(BIN)/python autograder/benchmark.py --device cuda --labs lab03-cnn-classifier -k 32 --per-gpu 1 2 4 8 16

# The reference training recipe on one MedMNIST flag per task type (real data when present).
bench-recipes: venv
	$(BIN)/python -m dlmi.recipes

clean:
	rm -rf book/_build labs/.released
