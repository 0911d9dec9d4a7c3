# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Where a decode cell's time goes, on a GPU (CUDA graphs, one card):

    python -m devtools.decode_breakdown --out decode_breakdown.json

Per cell: the whole ``paged_attention`` call, its split-KV launch alone (the
difference is the merge), an empty kernel on the same grid (launch cost), a
device-to-device copy of half the K/V bytes, and the best of a few streaming
read kernels over all of them (what reading those bytes can cost at best, L2
effects included: small cells fit in the L2 and replays hit it).
"""

import argparse
import json
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from devtools.bench_attention import MODELS, backend_plan, ragged_inputs, time_us
from vllm.v1.attention.ops.triton_attention import SplitKVWorkspace, paged_attention
from vllm.v1.attention.ops.triton_attention.checks import AttentionCall
from vllm.v1.attention.ops.triton_attention.launch import kernel_launches

CELLS = [
    ("llama3-8b", b, c)
    for b, c in ((1, 1024), (1, 16384), (4, 4096), (8, 4096), (16, 1024), (32, 1024), (64, 1024))
]
CELLS += [
    ("qwen-7to1", b, c)
    for b, c in ((1, 16384), (1, 65536), (4, 16384), (8, 4096), (16, 4096), (32, 1024), (64, 1024))
]


@triton.jit
def empty_kernel(x_ptr):
    pass


@triton.jit
def read_kernel(x_ptr, out_ptr, n, PER_PROGRAM: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * PER_PROGRAM
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, PER_PROGRAM, BLOCK):
        offsets = start + i + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc))


def best_read_us(x: torch.Tensor) -> tuple[float, tuple]:
    n, units = x.numel(), torch.cuda.get_device_properties(0).multi_processor_count
    out = torch.empty(1 << 16, device="cuda")
    best = (math.inf, ())
    for programs in (units * 4, units * 8, units * 16):
        for block in (2048, 4096):
            per_program = math.ceil(n / programs / block) * block
            grid = (math.ceil(n / per_program),)
            for warps in (4, 8):
                args = (x, out, n, per_program, block)
                launch = read_kernel[grid]
                us = time_us(
                    lambda launch=launch, args=args, warps=warps: launch(*args, num_warps=warps),
                    graphs=True,
                )
                best = min(best, (us, (programs, block, warps)))
    return best


def breakdown(model_name: str, batch: int, context: int) -> dict:
    model = MODELS[model_name]
    hq, hkv, d = model
    q_lens, seq_lens = [1] * batch, [context] * batch
    q, k_cache, v_cache, qsl, lens, block_table = ragged_inputs(
        model, q_lens, seq_lens, torch.bfloat16
    )
    plan = backend_plan(model, q_lens)
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(q)
    call = AttentionCall(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        out=out,
        query_start_loc=qsl,
        seq_lens=lens,
        block_table=block_table,
        scale=d**-0.5,
    )
    split_kv = kernel_launches(call, plan, workspace)[0]
    kv_bytes = batch * context * hkv * d * 2 * k_cache.element_size()
    x = torch.randn(kv_bytes // 2, device="cuda", dtype=torch.bfloat16)
    half = torch.empty(x.numel() // 2, device="cuda", dtype=torch.bfloat16)
    record = dict(
        model=model_name,
        batch=batch,
        context=context,
        kv_mb=kv_bytes / 1e6,
        splits=plan.num_kv_splits,
        tile=plan.kv_tile_size,
        stages=plan.num_stages,
    )
    record["full_us"] = time_us(
        lambda: paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            query_start_loc=qsl,
            seq_lens=lens,
            block_table=block_table,
            max_query_len=1,
            max_seq_len=context,
            scale=d**-0.5,
            plan=plan,
            workspace=workspace,
        ),
        graphs=True,
    )
    record["split_kv_us"] = time_us(split_kv.run, graphs=True)
    record["empty_grid_us"] = time_us(
        lambda: empty_kernel[split_kv.grid](q, num_warps=split_kv.options["num_warps"]),
        graphs=True,
    )
    record["copy_half_us"] = time_us(lambda: half.copy_(x[: half.numel()]), graphs=True)
    record["read_us"], record["read_config"] = best_read_us(x)
    record["read_over_full"] = record["read_us"] / record["full_us"]
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("decode_breakdown.json"))
    args = parser.parse_args()
    records = []
    for cell in CELLS:
        records.append(breakdown(*cell))
        print(json.dumps(records[-1]), flush=True)
    args.out.write_text(
        json.dumps(dict(card=torch.cuda.get_device_name(), records=records), indent=1)
    )


if __name__ == "__main__":
    main()
