# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Batch-invariant plans: a request's output is bitwise the same whatever batch
it runs in (alone, at any position among others, beside graph padding, in a
decode-only or a mixed batch), while split-KV keeps splitting long sequences.

One pool of requests shares one paged cache; each batch is a selection of
them, ordered as vLLM orders a batch (decodes first). On a GPU the batches go
up to 256 sequences in bf16; in the interpreter a few small ones in fp32.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import HAS_GPU

from devtools.batches import make_batch, plan_for_batch, small_gpu
from vllm.v1.attention.ops.triton_attention import GpuArch, MixedBatchPlan, paged_attention

if HAS_GPU:
    DTYPE, HEAD_SIZE, NUM_KV_HEADS, GROUP = torch.bfloat16, 128, 8, 4
    NUM_REQUESTS, LONGEST = 300, 20000
else:
    DTYPE, HEAD_SIZE, NUM_KV_HEADS, GROUP = torch.float32, 32, 2, 2
    NUM_REQUESTS, LONGEST = 8, 1200
# The GPU's own plans; in the interpreter, plans for GPUs whose grids follow
# these small batches: 16 units split every batch's sequences, 2 units fold
# the splits of the larger batches in one program each. With whether the
# batches' invariant plans fold their splits (``AttentionPlan.folds_splits``).
if HAS_GPU:
    ARCHS = {"gpu": (None, {True, False})}
else:
    ARCHS = {
        "16_units": (small_gpu(), {False}),
        "2_units": (GpuArch("cuda", "sm_89", 2), {True, False}),
    }


def _pool(max_decode_query_len: int):
    """Requests of every kind: decodes (or verifications of max_decode_query_len
    tokens) from short to long contexts, chunked prefills and prefills."""
    rng = random.Random(0)
    q_lens, seq_lens = [], []
    for index in range(NUM_REQUESTS):
        if index % 5 == 4:  # a chunk on a cached prefix, or a whole prompt
            q_len = rng.randint(max_decode_query_len + 1, 80)
            seq_lens.append(q_len + rng.choice([0, rng.randint(1, LONGEST // 4)]))
        else:
            q_len = max_decode_query_len
            seq_lens.append(rng.randint(q_len, LONGEST))
        q_lens.append(q_len)
    seq_lens[0] = LONGEST  # the first request needs the most splits
    pool = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=NUM_KV_HEADS * GROUP,
        num_kv_heads=NUM_KV_HEADS,
        head_size=HEAD_SIZE,
        block_size=16,
        dtype=DTYPE,
        device="cuda" if HAS_GPU else "cpu",
        layout="packed_nhd",
        generator=torch.Generator().manual_seed(1),
    )
    return pool, q_lens, seq_lens


def _run(pool, q_lens, seq_lens, requests, max_decode_query_len, padded, batch_invariant, arch):
    """Outputs of ``requests`` (pool indices) run as one batch, decodes first,
    with ``padded`` empty requests after them (a graph-padded batch)."""
    requests = sorted(requests, key=lambda r: q_lens[r] > max_decode_query_len)
    starts = pool.query_start_loc.tolist()
    rows = [torch.arange(starts[r], starts[r + 1]) for r in requests]
    device = pool.q.device
    q = torch.cat([pool.q[r.to(device)] for r in rows] + [pool.q[-1:].expand(padded, -1, -1)])
    lens = [q_lens[r] for r in requests] + [0] * padded
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    seq_len = torch.tensor([seq_lens[r] for r in requests] + [0] * padded, dtype=torch.int32)
    block_table = pool.block_table[[*requests, *([requests[0]] * padded)]]
    plan = plan_for_batch(
        lens,
        num_tokens=q.shape[0],
        num_q_heads=NUM_KV_HEADS * GROUP,
        num_kv_heads=NUM_KV_HEADS,
        head_size=HEAD_SIZE,
        device=device,
        arch=arch,
        max_decode_query_len=max_decode_query_len,
        dtype=DTYPE,
        batch_invariant=batch_invariant,
    )
    out = torch.full_like(q, float("nan"))
    paged_attention(
        q,
        pool.k_cache,
        pool.v_cache,
        out,
        query_start_loc=qsl.to(device),
        seq_lens=seq_len.to(device),
        block_table=block_table,
        max_query_len=max(lens),
        max_seq_len=max(seq_lens[r] for r in requests),
        scale=HEAD_SIZE**-0.5,
        plan=plan,
    )
    ends = qsl.tolist()
    return {r: out[ends[i] : ends[i + 1]] for i, r in enumerate(requests)}, plan


def _batches(q_lens, max_decode_query_len):
    """Batches of the pool around request 0 and a prefill: alone, at the
    front, in the middle and last, among few and many requests, with and
    without graph padding, decode-only and mixed."""
    rng = random.Random(1)
    decodes = [r for r in range(1, NUM_REQUESTS) if q_lens[r] <= max_decode_query_len]
    prefills = [r for r in range(NUM_REQUESTS) if q_lens[r] > max_decode_query_len]
    sizes = (1, 3, 8, 64, 255) if HAS_GPU else (1, 4)
    batches = []
    for size in sizes:
        others = rng.sample(decodes, min(size, len(decodes)))
        for position in (0, len(others) // 2, len(others)):
            batches.append((others[:position] + [0] + others[position:], 0))
        batches.append(([0, *others], 3))  # padded
        batches.append(([0, *others, *prefills[: 1 + size % 3]], 0))  # mixed
        batches.append(([prefills[0], *others[:2], *prefills[1 : 2 + size % 2]], 0))
    return batches


@pytest.mark.parametrize(("arch", "folds_seen"), ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("max_decode_query_len", [1, 4] if HAS_GPU else [1])
def test_outputs_are_bitwise_invariant_to_the_batch(max_decode_query_len, arch, folds_seen):
    pool, q_lens, seq_lens = _pool(max_decode_query_len)
    batches = _batches(q_lens, max_decode_query_len)
    prefill = next(r for r in range(NUM_REQUESTS) if q_lens[r] > max_decode_query_len)
    for batch_invariant in (True, False):
        first = {}
        varied = False
        split_programs, folds, kernels = set(), set(), set()
        for requests, padded in batches:
            outputs, plan = _run(
                pool,
                q_lens,
                seq_lens,
                requests,
                max_decode_query_len,
                padded,
                batch_invariant,
                arch,
            )
            decode_plan = plan.decode if isinstance(plan, MixedBatchPlan) else plan
            if decode_plan.is_split_kv:
                split_programs.add(decode_plan.grid[2])
                folds.add(decode_plan.folds_splits)
            kernels.add(type(plan).__name__)
            for request in (0, prefill):
                if request not in outputs:
                    continue
                assert not outputs[request].isnan().any()
                if request not in first:
                    first[request] = outputs[request]
                elif batch_invariant:
                    assert torch.equal(outputs[request], first[request]), (request, requests)
                else:
                    varied |= not torch.equal(outputs[request], first[request])
        assert set(first) == {0, prefill} and kernels == {"AttentionPlan", "MixedBatchPlan"}
        if batch_invariant:
            # the grid followed the batch, the long first request took many splits
            assert len(split_programs) > 1
            assert folds == folds_seen
        else:
            assert varied, "the default plans should be the control that can differ"
