# The README's commands. Everything runs from the project's own virtualenv (.venv),
# created on first use and refreshed when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

## run: the API under gunicorn on an embedded PostgreSQL with demo data (Ctrl-C stops both)
run: $(STAMP)
	$(BIN)/python -m devtools.run_dev

## test: lint, format check and the whole test suite against an embedded PostgreSQL
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## clean: remove the virtualenv and the development database
clean:
	rm -rf $(VENV) .devdb .pytest_cache .ruff_cache
