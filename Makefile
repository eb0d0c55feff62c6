# paperbook: the one place where the project's commands are spelled out.
#   make book   builds the whole book (every chapter executed at its default preset) into _build/html
#   make test   sync check, unit tests, distributed tests, every notebook under nbval
# Both start with `setup`, so on a fresh machine they are the only two commands needed.

PYTHON  ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python
# The CPU build of torch lies on this machine's disk; any other pin downloads a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# Debian packages the chapters need (installed by `setup` when apt-get is available and we are root).
DEB_PACKAGES ?= berkeley-abc fortunes-zh dataset-fashion-mnist

# The real data sets (paperbook.data): this repository's copies next to the checkout, when they are there.
SHARED_DATA := $(abspath $(CURDIR)/../shared/data)
export PAPERBOOK_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

NBS     := $(wildcard nbs/*.ipynb)
BOOK_SRC := _config.yml _toc.yml $(wildcard book/*.md book/*.bib book/_ext/*.py) $(NBS)
RUNS    := $(CURDIR)/_build/runs
# threads per worker when $(1) workers share the machine's cores (at least 1)
threads = $$(( $$(nproc) / $(1) > 0 ? $$(nproc) / $(1) : 1 ))

.PHONY: setup book test test-unit test-dist test-nbs sync export clean lint lab

setup: $(VENV)/.stamp-setup

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.stamp-setup: pyproject.toml Makefile | $(PY)
	@if [ -n "$(DEB_PACKAGES)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES); }; \
	  else echo "note: install the Debian packages $(DEB_PACKAGES) for the chapters that use them"; fi; \
	fi
	$(BIN)/pip install --quiet "$(TORCH)"
	@# both install a module `opencc`: drop the pure-Python one an older setup installed before OpenCC's own
	$(BIN)/pip uninstall --quiet -y opencc-python-reimplemented 2>/dev/null || true
	$(BIN)/pip install --quiet -e ".[all,dev,book]"
	touch $@

# ---- the book ---------------------------------------------------------------------------------
book: _build/html/index.html

# Jupyter Book executes one notebook at a time; book/execute.py first executes them BOOK_JOBS at a time
# (OMP_NUM_THREADS = cores / jobs each) into the jupyter-cache the build then reads (execute_notebooks: cache).
# The cache is removed first, so every page comes from this run.
BOOK_JOBS ?= 2
NB_CACHE := _build/.jupyter_cache
_build/html/index.html: $(VENV)/.stamp-setup $(BOOK_SRC) book/execute.py $(wildcard paperbook/*.py)
	rm -rf $(RUNS) $(NB_CACHE)
	PAPERBOOK_RUNS=$(RUNS) OMP_NUM_THREADS=$(call threads,$(BOOK_JOBS)) $(PY) book/execute.py --jobs $(BOOK_JOBS) --cache $(NB_CACHE) $(NBS)
	PAPERBOOK_RUNS=$(RUNS) $(BIN)/jupyter-book build . --all --path-output . --warningiserror --keep-going
	$(PY) tests/check_offline_html.py _build/html
	@echo "book: file://$(CURDIR)/_build/html/index.html"

# JupyterLab on the notebooks, with the same data folder the book uses.
lab: setup
	$(BIN)/jupyter lab nbs/

# ---- tests ------------------------------------------------------------------------------------
# One pytest session (so one summary line): unit, CLI and distributed tests, then every notebook.
# TEST_JOBS pytest-xdist workers (`--dist loadfile`: a notebook's cells stay in one worker, in order), each with
# OMP_NUM_THREADS = cores / workers (at least 1), a ceiling the chapters' own thread settings respect (paperbook.dist.threads).
# On the 2-core machine: 1,435 passed in 1,230 s with two workers against 1,900-2,165 s in one process.
# TEST_JOBS=1 runs everything in one process.
TEST_JOBS ?= 2
TEST_THREADS = $(call threads,$(TEST_JOBS))
PYTEST_PAR = $(if $(filter 1,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)
test: setup sync lint
	PAPERBOOK_PROGRESS=0 OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/pytest $(PYTEST_PAR) tests/ --nbval-lax nbs/ -p no:cacheprovider

# nbdev-export, clearing outputs and nbdev-clean must leave the library and notebooks unchanged
# (on a clean clone: what is committed is what the notebooks export).
SYNCED = find paperbook nbs -name '*.py' -o -name '*.ipynb' | sort | xargs md5sum | md5sum
sync: setup
	@before=$$($(SYNCED)); $(MAKE) --no-print-directory -s export >/dev/null; after=$$($(SYNCED)); \
	if [ "$$before" != "$$after" ]; then echo "nbs/ and paperbook/ were out of sync: 'make export' changed them (see git diff); commit both"; exit 1; fi
	@echo "sync: nbs/ and paperbook/ agree"

export: setup
	$(BIN)/nbdev-export
	$(BIN)/jupyter nbconvert --log-level=WARN --clear-output --inplace $(NBS)
	$(BIN)/nbdev-clean

# Unit tests and the distributed tests (torchrun with gloo, marked `dist`).
test-unit: setup
	PAPERBOOK_PROGRESS=0 $(BIN)/pytest tests/ -q

test-dist: setup
	PAPERBOOK_PROGRESS=0 $(BIN)/pytest tests/ -q -m dist

# Every notebook executes at its default preset.
test-nbs: setup
	PAPERBOOK_PROGRESS=0 OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/pytest $(PYTEST_PAR) --nbval-lax nbs/ -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check paperbook tests benchmarks book

clean:
	rm -rf _build runs .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
