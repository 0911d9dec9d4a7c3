# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Portability without a GPU: the hot kernel variants, chosen by the runtime's own
plan, compile for NVIDIA Hopper and AMD CDNA3/RDNA3 and fit their shared memory/LDS.

The full matrix (seven targets, every head size, GQA ratio, dtype, fp8 KV and
feature switch) is ``scripts/compile_matrix.py``; its report, with registers and
spills, is committed under ``benchmarks/results/portability/``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["sm_90", "gfx942", "gfx1100"])
def test_hot_variants_compile_within_shared_memory(target, tmp_path):
    # A fresh process without TRITON_INTERPRET: the tests' interpreter mode
    # would hand the compiler interpreted functions instead of kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "matrix.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compile_matrix.py"), "--subset", "hot",
         "--targets", target, "--workers", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert out.exists(), result.stderr[-3000:]
    records = json.loads(out.read_text())
    assert {r["kernel"] for r in records} == {
        "split_kv_decode_kernel", "merge_kv_splits_kernel", "long_query_attention_kernel"
    }  # fmt: skip
    for r in records:
        assert r["compiled"], f"{target} {r['kernel']} {r['variant']}: {r.get('error')}"
        assert r["shared_bytes"] <= r["shared_limit"], r
        if r["kernel"] != "merge_kv_splits_kernel":  # the attention kernels use the MMA units
            assert r["mma"] in ("wgmma", "mma.sync", "mfma", "wmma"), r
