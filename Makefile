# Two entry points (see README): `make demo` and `make test`. Each sets up a
# virtual environment in .venv on first use. On CPU-only machines torch is
# installed first from its pinned CPU build, so the project's bounded range
# installs nothing more.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= outputs/demo
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/nowcast demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) outputs .prefect .pytest_cache
