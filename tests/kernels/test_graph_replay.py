# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""CUDA-graph replay of the decode path: capture once at a batch size, replay with
smaller real batches (padding rows with q_len 0 and seq_len 0) and changing
contexts, compare with the reference every time. GPU only."""

import pytest
import torch
from conftest import HAS_GPU

from devtools.batches import TOLERANCES, make_batch
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    SplitKVWorkspace,
    paged_attention,
    plan_attention,
    reference_paged_attention,
)

pytestmark = pytest.mark.skipif(not HAS_GPU, reason="CUDA graphs need a GPU")

CAPTURED_SEQS, Q_LEN, MAX_BLOCKS = 8, 1, 64
HEADS, KV_HEADS, HEAD_SIZE, BLOCK = 32, 8, 128, 16


@pytest.mark.parametrize("q_len", [1, 4])
def test_decode_graph_replays_any_smaller_batch(q_len):
    torch.manual_seed(0)
    num_tokens = CAPTURED_SEQS * q_len
    # Static buffers, as vLLM's runner keeps them.
    q = torch.zeros(num_tokens, HEADS, HEAD_SIZE, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros_like(q)
    qsl = torch.zeros(CAPTURED_SEQS + 1, device="cuda", dtype=torch.int32)
    seq_lens = torch.zeros(CAPTURED_SEQS, device="cuda", dtype=torch.int32)
    block_table = torch.zeros(CAPTURED_SEQS, MAX_BLOCKS, device="cuda", dtype=torch.int32)
    num_blocks = CAPTURED_SEQS * MAX_BLOCKS + 1
    k_cache = torch.zeros(
        num_blocks, BLOCK, KV_HEADS, HEAD_SIZE, device="cuda", dtype=torch.bfloat16
    )
    v_cache = torch.zeros_like(k_cache)
    plan = plan_attention(
        num_tokens=num_tokens,
        num_seqs=CAPTURED_SEQS,
        max_query_len=q_len,
        num_q_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_size=HEAD_SIZE,
        arch=GpuArch.of_device("cuda"),
    )
    workspace = SplitKVWorkspace.allocate(plan, "cuda")

    def step():
        paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            query_start_loc=qsl,
            seq_lens=seq_lens,
            block_table=block_table,
            max_query_len=q_len,
            max_seq_len=1,
            scale=HEAD_SIZE**-0.5,
            plan=plan,
            workspace=workspace,
        )

    # Capture with vLLM's dummy batch: every sequence of length 1.
    qsl.copy_(torch.arange(CAPTURED_SEQS + 1, dtype=torch.int32) * q_len)
    seq_lens.fill_(q_len)
    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for real_seqs, context in [(8, 900), (5, 17), (1, 1000), (3, 64), (8, 1)]:
        lens = [max(context - 13 * i, q_len) for i in range(real_seqs)]
        fresh = make_batch(
            [q_len] * real_seqs,
            lens,
            num_q_heads=HEADS,
            num_kv_heads=KV_HEADS,
            head_size=HEAD_SIZE,
            block_size=BLOCK,
            dtype=torch.bfloat16,
            device="cuda",
            padding_tokens=num_tokens - real_seqs * q_len,
            generator=torch.Generator().manual_seed(context),
        )
        # Fill the static buffers in place; padding rows: q_len 0, seq_len 0.
        q.copy_(fresh.q)
        k_cache[: fresh.k_cache.shape[0]].copy_(fresh.k_cache)
        v_cache[: fresh.v_cache.shape[0]].copy_(fresh.v_cache)
        qsl.fill_(real_seqs * q_len)
        qsl[: real_seqs + 1].copy_(fresh.query_start_loc)
        seq_lens.zero_()
        seq_lens[:real_seqs].copy_(fresh.seq_lens)
        block_table.fill_(0)
        width = min(fresh.block_table.shape[1], MAX_BLOCKS)
        block_table[:real_seqs, :width].copy_(fresh.block_table[:, :width])
        out.fill_(float("nan"))
        graph.replay()
        expected = reference_paged_attention(
            q,
            k_cache,
            v_cache,
            query_start_loc=qsl,
            seq_lens=seq_lens,
            block_table=block_table,
            scale=HEAD_SIZE**-0.5,
        )
        rows = real_seqs * q_len
        assert not out[:rows].isnan().any(), (real_seqs, context)
        torch.testing.assert_close(
            out[:rows].float(), expected[:rows].float(), **TOLERANCES[torch.bfloat16]
        )
