# Every target creates .venv on demand from the pinned dependencies in pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-big bench-brevo bench-budget bench-startup bench-ingest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/amplitude-brevo demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench

bench: $(STAMP)
	$(BIN)/python bench/export_throughput.py

bench-big: $(STAMP)
	$(BIN)/python bench/export_throughput.py --big

bench-brevo: $(STAMP)
	$(BIN)/python bench/brevo_events.py

bench-budget: $(STAMP)
	$(BIN)/python bench/brevo_budget.py

bench-startup: $(STAMP)
	$(BIN)/python bench/state_startup.py

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py --cpu 1

clean:
	rm -rf $(VENV) .pytest_cache
