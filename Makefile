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
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/pre-commit run --all-files

clean:
	rm -rf $(VENV) build dist *.egg-info
