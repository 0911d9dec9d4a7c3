# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""A KV cache whose element offsets pass 2**31: every kernel must address it in
64-bit. The sequences live in the cache's last blocks, so int32 offset
arithmetic would wrap and read (or write) the wrong place. GPU only (two
4.5 GB caches)."""

import pytest
import torch
from conftest import HAS_GPU

from devtools.batches import TOLERANCES, plan_for_batch
from vllm.v1.attention.ops.triton_attention import (
    paged_attention,
    reference_paged_attention,
    write_kv_cache,
)

KV_HEADS, GROUP, HEAD_SIZE, BLOCK = 1, 4, 128, 16
ELEMENTS_PER_BLOCK = BLOCK * KV_HEADS * HEAD_SIZE
NUM_BLOCKS = 2**31 // ELEMENTS_PER_BLOCK + 4096  # the last blocks start past 2**31


def _enough_memory() -> bool:
    if not HAS_GPU:
        return False
    free, _ = torch.cuda.mem_get_info()
    return free > 2 * NUM_BLOCKS * ELEMENTS_PER_BLOCK * 2 + (2 << 30)


pytestmark = pytest.mark.skipif(not _enough_memory(), reason="needs a GPU with ~12 GB free")


@pytest.mark.parametrize("q_lens", [[1, 1, 1], [1, 4, 4], [1, 300, 70]], ids=str)
def test_cache_offsets_past_2_pow_31(q_lens):
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_cache = torch.empty(
        NUM_BLOCKS, BLOCK, KV_HEADS, HEAD_SIZE, device="cuda", dtype=torch.bfloat16
    )
    v_cache = torch.empty_like(k_cache)
    assert k_cache.numel() > 2**31
    seq_lens = [q + 500 for q in q_lens]
    blocks_per_seq = -(-max(seq_lens) // BLOCK)
    # Every sequence's blocks come from the last 4096, shuffled.
    last = torch.arange(NUM_BLOCKS - 4096, NUM_BLOCKS, device="cuda", dtype=torch.int32)
    chosen = last[torch.randperm(4096, device="cuda", generator=gen)]
    block_table = chosen[: len(q_lens) * blocks_per_seq].view(len(q_lens), blocks_per_seq)
    k_cache[chosen.long()] = torch.randn(
        4096, BLOCK, KV_HEADS, HEAD_SIZE, device="cuda", generator=gen, dtype=torch.bfloat16
    )
    v_cache[chosen.long()] = torch.randn_like(k_cache[chosen.long()])

    # The new tokens' K/V go through the cache-write kernel into those blocks.
    num_tokens = sum(q_lens)
    num_q_heads = KV_HEADS * GROUP
    q = torch.randn(
        num_tokens, num_q_heads, HEAD_SIZE, device="cuda", generator=gen, dtype=torch.bfloat16
    )
    key = torch.randn(
        num_tokens, KV_HEADS, HEAD_SIZE, device="cuda", generator=gen, dtype=torch.bfloat16
    )
    value = torch.randn_like(key)
    positions = torch.cat([torch.arange(s - q, s) for q, s in zip(q_lens, seq_lens, strict=True)])
    owners = torch.repeat_interleave(torch.arange(len(q_lens)), torch.tensor(q_lens))
    blocks = block_table.cpu()[owners, positions // BLOCK].long()
    slot_mapping = (blocks * BLOCK + positions % BLOCK).to("cuda")
    assert int(slot_mapping.max()) * KV_HEADS * HEAD_SIZE > 2**31
    write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    torch.testing.assert_close(k_cache[blocks.cuda(), (positions % BLOCK).cuda()], key)

    qsl = torch.tensor(
        [0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda"
    )
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    args = dict(
        query_start_loc=qsl,
        seq_lens=lens,
        block_table=block_table,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        scale=HEAD_SIZE**-0.5,
    )
    plan = plan_for_batch(
        q_lens,
        num_tokens=num_tokens,
        num_q_heads=num_q_heads,
        num_kv_heads=KV_HEADS,
        head_size=HEAD_SIZE,
        device="cuda",
        max_decode_query_len=4,
    )
    out = torch.full_like(q, float("nan"))
    paged_attention(q, k_cache, v_cache, out, plan=plan, **args)
    expected = reference_paged_attention(q, k_cache, v_cache, **args)
    torch.testing.assert_close(out.float(), expected.float(), **TOLERANCES[torch.bfloat16])
