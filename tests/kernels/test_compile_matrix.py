# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Portability without a GPU: the hot kernel variants, chosen by the runtime's own
plan, compile for NVIDIA Hopper and AMD CDNA3/RDNA3 and fit their shared memory/LDS.

The full matrix (seven targets, every head size, GQA ratio, dtype, fp8 KV and
feature switch) is ``scripts/compile_matrix.py``; its report, with registers and
spills, is committed under ``benchmarks/results/portability/``.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import compile_matrix  # noqa: E402

pytest.importorskip("triton.backends.amd", reason="this Triton build has no AMD backend")


@pytest.mark.parametrize("target", ["sm_90", "gfx942", "gfx1100"])
def test_hot_variants_compile_within_shared_memory(target):
    records = compile_matrix.run("hot", [target], workers=1)
    assert {r["kernel"] for r in records} == {
        "split_kv_decode_kernel", "merge_kv_splits_kernel", "long_query_attention_kernel"
    }  # fmt: skip
    for r in records:
        assert r["compiled"], f"{target} {r['kernel']} {r['variant']}: {r.get('error')}"
        assert r["shared_bytes"] <= r["shared_limit"], r
        if r["kernel"] != "merge_kv_splits_kernel":  # the attention kernels use the MMA units
            assert r["mma"] in ("wgmma", "mma.sync", "mfma", "wmma"), r
