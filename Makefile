# SPDX-License-Identifier: Apache-2.0
# The two README commands: `make test` and `make serve`.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

# Every cache lives in ignored folders inside the repo.
export TRITON_CACHE_DIR := $(CURDIR)/.cache/triton
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export VLLM_TRITON_ATTN_CACHE := $(CURDIR)/.cache/upstream

# What `pip install .` is built from: reinstall when any of it changes.
SOURCES := setup.py pyproject.toml upstream.json scripts/patchset.py \
           $(shell find vllm patches -type f -not -path '*/__pycache__/*')
STAMP := $(VENV)/.installed

.PHONY: test install lint serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES) requirements-test.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install . -r requirements-test.txt
	rm -rf build vllm.egg-info  # the in-tree build: 1 GB of unpacked wheel
	touch $@

install: $(STAMP)

# pytest (not python -m pytest): the repo root must not shadow the installed vllm.
test: install
	$(VENV)/bin/pytest tests

lint: install
	$(VENV)/bin/pre-commit run --all-files

# On a GPU box: make serve MODEL=<hf id or path>. It listens on 127.0.0.1:$(PORT).
MODEL ?=
PORT ?= 8000
serve: install
	@test -n "$(MODEL)" || { echo "make serve: set MODEL=<hf id or local path>"; exit 2; }
	@echo "serving $(MODEL) with TRITON_ATTN on http://127.0.0.1:$(PORT)"
	@echo "try: curl http://127.0.0.1:$(PORT)/v1/completions -H 'Content-Type: application/json' -d '{\"model\": \"$(MODEL)\", \"prompt\": \"Hello\", \"max_tokens\": 16}'"
	$(VENV)/bin/vllm serve $(MODEL) --host 127.0.0.1 --port $(PORT) --attention-backend TRITON_ATTN

clean:
	rm -rf $(VENV) build dist *.egg-info
