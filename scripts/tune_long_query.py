# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Sweep long-query (prefill) launch parameters on the current GPU (CUDA-graph timing).

python3 scripts/tune_long_query.py --heads 32,8,128 --out $OUT/tune_long_query.json
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
    paged_attention,
    plan_attention,
)
from vllm.v1.attention.ops.triton_attention.plan import long_query_grid_size  # noqa: E402

VARIANTS = list(itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4)))
CELLS = [(1, 8192), (4, 4096)]


def time_variant(inputs, base, variant, seq):
    q, k_cache, v_cache, qsl, seq_lens, block_table = inputs
    block_m, tile, warps, stages = variant
    tokens_per_block = block_m // base.queries_per_kv
    grid = (long_query_grid_size(base.num_tokens, base.num_seqs, tokens_per_block),
            base.num_kv_heads, 1)  # fmt: skip
    plan = dataclasses.replace(base, block_m=block_m, kv_tile_size=tile, num_warps=warps,
                               num_stages=stages, grid=grid)  # fmt: skip
    out = torch.empty_like(q)

    def run():
        paged_attention(q, k_cache, v_cache, out, query_start_loc=qsl, seq_lens=seq_lens,
                        block_table=block_table, max_query_len=seq, max_seq_len=seq,
                        scale=base.head_size**-0.5, plan=plan)  # fmt: skip

    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(run, rep=30, return_mode="median") * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tune_long_query.json")
    parser.add_argument("--heads", default="32,8,128")
    args = parser.parse_args()
    hq, hkv, d = map(int, args.heads.split(","))
    arch = GpuArch.of_device("cuda")
    results = []
    for batch, seq in CELLS:
        inputs = paged_inputs((hq, hkv, d), batch, seq, seq, torch.bfloat16)
        base = plan_attention(num_tokens=batch * seq, num_seqs=batch, max_query_len=seq,
                              num_q_heads=hq, num_kv_heads=hkv, head_size=d, arch=arch)  # fmt: skip
        flops = 4 * batch * hq * d * seq * seq / 2
        current = time_variant(inputs, base, (base.block_m, base.kv_tile_size, base.num_warps,
                                              base.num_stages), seq)  # fmt: skip
        timings = {}
        for variant in VARIANTS:
            try:
                timings[variant] = time_variant(inputs, base, variant, seq)
            except Exception as error:  # e.g. out of shared memory for this tile
                print(f"skip {variant}: {str(error).splitlines()[0][:80]}")
        best = min(timings, key=timings.get)
        results.append(dict(batch=batch, seq=seq, head_size=d, current_us=current,
                            current_tflops=flops / current / 1e6, best=best,
                            best_tflops=flops / timings[best] / 1e6,
                            top5=sorted(timings.items(), key=lambda kv: kv[1])[:5]))  # fmt: skip
        print(f"b{batch} s{seq} d{d}: current {flops / current / 1e6:.0f} TFLOP/s, best "
              f"(block_m, tile, warps, stages) {best} {flops / timings[best] / 1e6:.0f}",
              flush=True)  # fmt: skip
        inputs = None
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
