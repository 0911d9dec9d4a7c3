# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Sweep split-KV decode launch parameters on the current GPU (CUDA-graph timing).

Prints, per cell, the time of the current plan and of the best variant found,
so plan rules can be set from measurements:

    python3 scripts/tune_split_kv.py --out $OUT/tune_split_kv.json
"""

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import torch
import triton.testing

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
sys.path.append(str(REPO / "scripts"))

from bench_attention import paged_inputs  # noqa: E402

from vllm.v1.attention.ops.triton_attention import (  # noqa: E402
    GpuArch,
    SplitKVWorkspace,
    paged_attention,
    plan_attention,
)

VARIANTS = list(itertools.product((2, 4, 8), (64, 128), (4, 8), (2, 3, 4)))
CELLS = list(itertools.product((1, 4, 16, 64), (16384, 65536)))


def time_variant(inputs, base, variant, q_len, context, arch):
    q, k_cache, v_cache, qsl, seq_lens, block_table = inputs
    per_cu, tile, warps, stages = variant
    batch, hkv = base.num_seqs, base.num_kv_heads
    splits = max(1, min(128, -(-arch.num_compute_units * per_cu // (batch * hkv))))
    plan = dataclasses.replace(base, kv_tile_size=tile, num_warps=warps, num_stages=stages,
                               num_kv_splits=splits, grid=(batch, hkv, splits))  # fmt: skip
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(q)

    def run():
        paged_attention(q, k_cache, v_cache, out, query_start_loc=qsl, seq_lens=seq_lens,
                        block_table=block_table, max_query_len=q_len, max_seq_len=context,
                        scale=base.head_size**-0.5, plan=plan, workspace=workspace)  # fmt: skip

    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median") * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tune_split_kv.json")
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--heads", default="32,8,128")
    args = parser.parse_args()
    hq, hkv, d = map(int, args.heads.split(","))
    arch = GpuArch.of_device("cuda")
    results = []
    for batch, context in CELLS:
        inputs = paged_inputs((hq, hkv, d), batch, args.q_len, context, torch.bfloat16)
        base = plan_attention(num_tokens=inputs[0].shape[0], num_seqs=batch,
                              max_query_len=args.q_len, num_q_heads=hq, num_kv_heads=hkv,
                              head_size=d, arch=arch)  # fmt: skip
        current = time_variant(inputs, base, (2, base.kv_tile_size, base.num_warps,
                               base.num_stages), args.q_len, context, arch)  # fmt: skip
        timings = {}
        for variant in VARIANTS:
            try:
                timings[variant] = time_variant(inputs, base, variant, args.q_len, context, arch)
            except Exception as error:  # e.g. out of shared memory for this tile
                print(f"skip {variant}: {str(error).splitlines()[0][:80]}")
        best = min(timings, key=timings.get)
        gbps = 2 * batch * context * hkv * d * 2 / timings[best] / 1e3
        results.append(dict(batch=batch, context=context, q_len=args.q_len, current_us=current,
                            best=best, best_us=timings[best], best_gbps=gbps,
                            top5=sorted(timings.items(), key=lambda kv: kv[1])[:5]))  # fmt: skip
        print(f"b{batch} ctx{context}: current {current:.1f} us, best (per_cu, tile, warps, "
              f"stages) {best} {timings[best]:.1f} us = {gbps:.0f} GB/s", flush=True)  # fmt: skip
        inputs = None
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
