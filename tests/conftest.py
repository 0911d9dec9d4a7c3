# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Test-wide setup: without a GPU, Triton kernels run in its interpreter."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

try:
    import torch

    HAS_GPU = torch.cuda.is_available()
except ImportError:  # the patch-tool tests run without torch
    HAS_GPU = False

if not HAS_GPU:
    # Must be set before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:  # as the CPU development platform does: a third less interpreter time
        from vllm.platforms.triton_interpreter import patch_language_once_per_launch
    except ImportError:  # the patch-tool tests run without vLLM installed
        pass
    else:
        patch_language_once_per_launch()

# The repo root, last on the path: ``devtools`` imports from it, and on a GPU
# machine without vLLM so does the kernel package, as a namespace package.
# Where vLLM is installed, its regular package comes first and tests use it.
sys.path.append(str(REPO))


@pytest.fixture
def vllm_int4(monkeypatch):
    """vLLM 0.34.0's own int4_per_token_head module, to check our cache against
    (skips where vLLM is not installed). Without a GPU driver vLLM hands its
    kernels a stand-in Triton; it and the kernel modules it imports are
    imported here against the real one, which runs them in the interpreter."""
    triton_utils = pytest.importorskip("vllm.triton_utils")
    import importlib

    import triton

    monkeypatch.setattr(triton_utils, "triton", triton)
    monkeypatch.setattr(triton_utils, "tl", triton.language)
    for name in ("triton_attention_helpers", "triton_unified_attention", "int4_per_token_head"):
        monkeypatch.delitem(sys.modules, f"vllm.v1.attention.ops.{name}", raising=False)
    return importlib.import_module("vllm.v1.attention.ops.int4_per_token_head")


def pytest_report_header(config):
    where = "GPU" if HAS_GPU else "CPU, Triton interpreter"
    return f"triton attention tests on: {where}"


@pytest.fixture
def device():
    return "cuda" if HAS_GPU else "cpu"
