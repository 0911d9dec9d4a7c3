# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Host-side cost of one paged_attention call (what piecewise CUDA graphs pay per layer)."""

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
sys.path.append(str(REPO / "tests"))

from batches import make_batch  # noqa: E402

from vllm.v1.attention.ops.triton_attention import (  # noqa: E402
    GpuArch,
    SplitKVWorkspace,
    check_paged_attention_inputs,  # noqa: E402
    paged_attention,
    plan_attention,
)


def per_call_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - start) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    # 8 sequences: split-KV + merge; 128: one split (the Gluon kernel on sm_90)
    for num_seqs in (8, 128):
        measure(num_seqs)


def measure(num_seqs):
    batch = make_batch([1] * num_seqs, [1000] * num_seqs, num_q_heads=32, num_kv_heads=8,
                       head_size=128, block_size=16, dtype=torch.bfloat16,
                       device="cuda")  # fmt: skip
    arch = GpuArch.of_device("cuda")
    plan = plan_attention(num_tokens=num_seqs, num_seqs=num_seqs, max_query_len=1,
                          num_q_heads=32, num_kv_heads=8, head_size=128, arch=arch)  # fmt: skip
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(batch.q)
    args = batch.kernel_args()
    full = lambda: paged_attention(batch.q, batch.k_cache, batch.v_cache, out, scale=0.1,  # noqa: E731
                                   plan=plan, workspace=workspace, **args)  # fmt: skip
    no_plan = lambda: paged_attention(batch.q, batch.k_cache, batch.v_cache, out, scale=0.1,  # noqa: E731
                                      **args)  # fmt: skip
    check = lambda: check_paged_attention_inputs(  # noqa: E731
        batch.q, batch.k_cache, batch.v_cache, out, args["query_start_loc"], args["seq_lens"],
        args["block_table"], 1, None, None, None, None, None, None, plan, arch)  # fmt: skip
    planning = lambda: plan_attention(
        num_tokens=num_seqs,
        num_seqs=num_seqs,
        max_query_len=1,  # noqa: E731
        num_q_heads=32,
        num_kv_heads=8,
        head_size=128,
        arch=arch,
    )
    kernel = "pipelined" if plan.pipelined_decode else "portable"
    print(f"{num_seqs} sequences ({plan.num_kv_splits} splits, {kernel} decode): "
          f"host us per call: with plan {per_call_us(full):.1f}, without plan "
          f"{per_call_us(no_plan):.1f}, checks {per_call_us(check):.1f}, "
          f"plan {per_call_us(planning):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
