# Two commands matter: `make demo` (the main job) and `make test` (the test suite).
# Both create ./.venv on first use and install the project into it; nothing needs installing by hand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test test-gpu-image install install-dev bench notebooks docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

install: $(VENV)/.demo-installed
install-dev: $(VENV)/.dev-installed

demo: $(VENV)/.demo-installed
	$(BIN)/moram-ref demo --out runs/demo

# MORAM_SHARED_DATA: where tests find the shared data (default ../shared/data); empty hides it (.ci/run does both)
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

# The same suite with the lent GPU machine's torch, Triton and transformers (on the CPU), in a second venv;
# .ci/run runs it too. The pins and why: tools/gpu-image-constraints.txt.
# Python 3.12 as there when one with venv runs here (on PATH, or pyenv's), else $(PY).
GPU_IMAGE_VENV := .venv-gpu-image
PYENV_VERSIONS = $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
GPU_IMAGE_PY ?= $(firstword $(foreach p,python3.12 $(wildcard $(PYENV_VERSIONS)/3.12*/bin/python3.12),\
	$(shell $(p) -c 'import venv, ensurepip' >/dev/null 2>&1 && echo $(p))) $(PY))

$(GPU_IMAGE_VENV)/.dev-installed: pyproject.toml tools/gpu-image-constraints.txt
	$(GPU_IMAGE_PY) -m venv --clear $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_VENV)/bin/pip install -q --upgrade pip
	$(GPU_IMAGE_VENV)/bin/pip install -q -c tools/gpu-image-constraints.txt -e '.[dev]'
	touch $@

test-gpu-image: $(GPU_IMAGE_VENV)/.dev-installed
	$(GPU_IMAGE_VENV)/bin/python -c 'import sys, numpy, torch, triton, transformers as t; print("test-gpu-image: Python", sys.version.split()[0], "torch", torch.__version__, "Triton", triton.__version__, "transformers", t.__version__, "numpy", numpy.__version__)'
	$(GPU_IMAGE_VENV)/bin/python -m pytest -q

bench: $(VENV)/.dev-installed
	$(BIN)/python -m moram_ref.bench --repeat 9

notebooks: $(VENV)/.dev-installed
	$(BIN)/jupytext --to ipynb tutorials/[0-9][0-9]_*.py

# site/: every page, the tutorials executed into pages with their figures, math as MathML (offline).
# Tutorial 8 needs DATA_ROOT=<llm-cl-benchmark-500> to be executed; without it its page shows the code only.
docs: $(VENV)/.dev-installed
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(GPU_IMAGE_VENV) runs build *.egg-info
