# Aeron TUI — every target bootstraps .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# On a machine without CUDA take the CPU build of torch first, so nothing pulls a CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	@# The onnx and plot extras too, so the test suite exercises `aeron-tui export onnx` and
	@# `aeron-tui runs plot` end to end.
	@$(BIN)/python -m pip install -q -e ".[dev,onnx,plot]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/aeron-tui launch --start

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@for b in bench/*.py; do case $$b in */bench_common.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
