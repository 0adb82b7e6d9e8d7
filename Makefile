# unisync: `make demo` (synthetic corpus -> store -> trained sync expert) and `make test`.
# Everything installs into .venv from nothing; constraints.txt pins the resolved versions.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python pipelines/demo.py --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
