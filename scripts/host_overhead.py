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
    batch = make_batch([1] * 8, [1000] * 8, num_q_heads=32, num_kv_heads=8, head_size=128,
                       block_size=16, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    arch = GpuArch.of_device("cuda")
    plan = plan_attention(num_tokens=8, num_seqs=8, max_query_len=1, num_q_heads=32,
                          num_kv_heads=8, head_size=128, arch=arch)  # fmt: skip
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
        num_tokens=8,
        num_seqs=8,
        max_query_len=1,  # noqa: E731
        num_q_heads=32,
        num_kv_heads=8,
        head_size=128,
        arch=arch,
    )
    print(f"host us per call: with plan {per_call_us(full):.1f}, without plan "
          f"{per_call_us(no_plan):.1f}, checks {per_call_us(check):.1f}, "
          f"plan {per_call_us(planning):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
