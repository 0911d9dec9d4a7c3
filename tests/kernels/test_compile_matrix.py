# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Portability without a GPU: the hot kernel variants (decode of small and large
batches, and prefill; head sizes 64 and 128; the cache write with vLLM's
rotary embedding fused in), chosen by the runtime's own plan
and specialised as Triton's launcher would, compile for all eight NVIDIA and
AMD targets, use the matrix units, fit shared memory/LDS, and do not spill
registers on sm_80, sm_90, gfx942 and gfx950 (the gate of
``python -m devtools.compile_matrix``).

The full matrix (every head size, GQA ratio, dtype, fp8 KV and feature switch)
is ``python -m devtools.compile_matrix --subset full``; its report, with registers and
spills, is committed under ``benchmarks/results/portability/``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.compile_matrix import TARGETS, gate_failures

REPO = Path(__file__).resolve().parents[2]


def test_hot_variants_compile_for_every_target_without_gated_spills(tmp_path):
    # A fresh process without TRITON_INTERPRET: the tests' interpreter mode
    # would hand the compiler interpreted functions instead of kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "matrix.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.compile_matrix",
            "--subset",
            "hot",
            "--workers",
            "2",
            "--out",
            str(out),
            "--ptx",
            str(tmp_path / "ptx"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=REPO,
    )
    assert out.exists(), result.stderr[-3000:]
    records = json.loads(out.read_text())
    assert {r["target"] for r in records} == set(TARGETS)
    assert {r["kernel"] for r in records} == {
        "split_kv_decode_kernel",
        "merge_kv_splits_kernel",
        "long_query_attention_kernel",
        "split_kv_decode_pipelined_kernel",  # sm_90, one split per sequence, head 128
        "long_query_pipelined_kernel",  # sm_90, heads 64 and 128
        "write_kv_cache_kernel",  # with the rotary embedding (RoPE + KV-cache fusion)
    }
    assert gate_failures(records) == []
    # --ptx: one file per NVIDIA kernel, without debug lines, for diffing two runs.
    ptx_files = sorted((tmp_path / "ptx").rglob("*.ptx"))
    nvidia = [r for r in records if TARGETS[r["target"]][0] == "cuda"]
    assert len(ptx_files) == len({(r["target"], r["kernel"], str(r["variant"])) for r in nvidia})
    for path in ptx_files:
        lines = [line.lstrip() for line in path.read_text().splitlines()]
        assert not any(line.startswith((".loc", ".file")) for line in lines), path
    for r in records:
        if r["kernel"] not in ("merge_kv_splits_kernel", "write_kv_cache_kernel"):
            # the attention kernels use the MMA units
            assert r["mma"] in ("wgmma", "mma.sync", "tcgen05", "mfma", "wmma"), r
