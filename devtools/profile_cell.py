# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Run one benchmark cell repeatedly (eager), for a profiler to attach to:

    ncu --clock-control none --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --launch-skip 10 --launch-count 2 \\
        python -m devtools.profile_cell --batch 1 --context 16384

``--plan '{"kernel": "long_query"}'`` profiles another launch of the same
cell (here the portable long-query kernel instead of the Hopper one, with the
Hopper plan's tiles unless overridden too).
"""

import argparse
import dataclasses
import json

import torch

from devtools.bench_attention import MODELS, backend_plan, ragged_inputs
from vllm.v1.attention.ops.triton_attention import SplitKVWorkspace, paged_attention


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama3-8b", choices=MODELS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--plan", type=json.loads, default={}, help="AttentionPlan fields to override (JSON)"
    )
    args = parser.parse_args()
    model = MODELS[args.model]
    q_lens, seq_lens = [args.q_len] * args.batch, [args.context] * args.batch
    q, k_cache, v_cache, qsl, lens, block_table = ragged_inputs(
        model, q_lens, seq_lens, torch.bfloat16
    )
    plan = dataclasses.replace(backend_plan(model, q_lens), **args.plan)
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(q)
    print(plan)
    for _ in range(args.iters):
        paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            query_start_loc=qsl,
            seq_lens=lens,
            block_table=block_table,
            max_query_len=args.q_len,
            max_seq_len=args.context,
            scale=model[2] ** -0.5,
            plan=plan,
            workspace=workspace,
        )
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
