# Renkei: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps viewer clean

$(STAMP): pyproject.toml
	@scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

## Run the hub on http://127.0.0.1:1026 with sample data (SQLite file ./renkei.db)
demo: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then scripts/build-viewer.sh; \
	else echo "npm not found: the map viewer and API docs are not built / npm がないため地図ビューアーと API ドキュメントはビルドされません"; fi
	$(BIN)/renkei demo

## Build the map viewer (/viewer) and API docs (/docs, /redoc): MapLibre GL JS, Swagger UI
## and ReDoc from npm into broker/static/{viewer,docs}/vendor
viewer:
	scripts/build-viewer.sh

## Lint, type-check and run the whole test suite
test: $(STAMP) system-deps lint typecheck pytest

system-deps:
	@scripts/system-deps.sh test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache renkei.db renkei.db-wal renkei.db-shm \
		renkei-iota.db renkei-iota.db-wal renkei-iota.db-shm
