# unisync: `make demo` (synthetic corpus -> store -> trained sync expert) and `make test`.
# Everything installs into .venv from nothing: the dependencies from requirements.txt with every
# version pinned by constraints.txt, then this project editable (its console scripts in .venv/bin,
# the packages importable from any directory; an edit to the code needs no reinstall).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: demo test install clean

install: $(STAMP)

# setuptools (the build backend, pinned in constraints.txt) is installed into the venv so the
# project builds with --no-build-isolation: no second download of the backend, the same version.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt -c constraints.txt setuptools
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/unisync-demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build dist
