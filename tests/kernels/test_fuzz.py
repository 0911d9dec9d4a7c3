# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Property-based fuzzing of paged_attention against the reference (hypothesis).

Random batches: sequence count, per-sequence query and context lengths (empty
padding rows included), block size, head size, GQA ratio, feature switches
(multimodal ranges included), dtype, cache layout, shared prefix blocks,
padding tokens, batch-invariant plans, fused fp8 outputs, log-sum-exps; and
cache writes with the rotary embedding fused in (``rope_writes``). Examples are
seeded (same inputs every run, no reruns). Batches that start with short
queries also run as a ``MixedBatchPlan``. The CPU profile runs a bounded number
through the interpreter; on a GPU the examples are cut into shards (one test
each) so that ``pytest -n`` compiles and runs them in parallel:
``HYPOTHESIS_EXAMPLES=2000 pytest -n 12 tests/kernels/test_fuzz.py``.
"""

import os

import torch
from conftest import HAS_GPU
from hypothesis import assume, given, seed, settings
from hypothesis import strategies as st
from test_write_kv_cache import check_rope_and_write

from devtools.batches import (
    TOLERANCES,
    assert_fp8_output_close,
    make_batch,
    plan_for_batch,
    small_gpu,
)
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    paged_attention,
    reference_paged_attention,
)
from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", 2000 if HAS_GPU else 25))
SHARDS = 16 if HAS_GPU else 1
# bf16 only on the GPU: the interpreter's bf16 tl.dot is wrong
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if HAS_GPU else [])


@st.composite
def _mm_ranges(draw, seq_lens):
    """Up to two disjoint inclusive ranges per sequence, some past its length,
    padded with vLLM's (0, 0) to one count."""
    ranges = []
    for seq_len in seq_lens:
        count = draw(st.integers(0, 2))
        ends = draw(
            st.lists(
                st.integers(0, seq_len + 8), min_size=2 * count, max_size=2 * count, unique=True
            )
        )
        ends.sort()
        ranges.append(list(zip(ends[::2], ends[1::2], strict=True)) + [(0, 0)] * (2 - count))
    return ranges


@st.composite
def batches(draw):
    num_seqs = draw(st.integers(1, 4))
    decode = draw(st.booleans())
    q_lens = [draw(st.integers(0, 3 if decode else 40)) for _ in range(num_seqs)]
    seq_lens = [q + draw(st.integers(0, 90)) if q else 0 for q in q_lens]
    features = dict(
        # one flag for the call, or one per sequence
        causal=draw(
            st.one_of(st.booleans(), st.lists(st.booleans(), min_size=num_seqs, max_size=num_seqs))
        ),
        sliding_window=draw(st.sampled_from([None, None, 1, 7, 40])),
        chunk_lookback=draw(st.sampled_from([None, None, 0, 1, 3])),
        logits_soft_cap=draw(st.sampled_from([None, None, 5.0])),
        alibi=draw(st.sampled_from([None, None, "linear", "sqrt"])),
        sinks=draw(st.booleans()),
        mixed_plan=draw(st.booleans()),
        batch_invariant=draw(st.booleans()),
        # in the interpreter: its own plan (no splits, the largest tiles), or a small GPU's
        small_gpu=draw(st.booleans()),
        mm_prefix_ranges=draw(st.one_of(st.none(), _mm_ranges(seq_lens))),
        mm_prefix_clamp_sliding_window=draw(st.booleans()),
        # R-SWA's prompt prefixes (with a window on a causal call, without ranges)
        rswa_prefix_lens=draw(
            st.one_of(st.none(), st.tuples(*(st.integers(0, s) for s in seq_lens)).map(list))
        ),
    )
    shape = dict(
        head_size=draw(st.sampled_from([32, 64, 80, 512])),
        num_kv_heads=draw(st.sampled_from([1, 2])),
        group=draw(st.sampled_from([1, 2, 3, 4, 7])),
        block_size=draw(st.sampled_from([16, 32])),
        dtype=draw(st.sampled_from(DTYPES)),
        # a cache of the queries' type, or int8 or int4 with a scale per token and KV head
        kv_dtype=draw(st.sampled_from([None, None, torch.int8, INT4_KV_DTYPE])),
        layout=draw(st.sampled_from(["separate", "packed_nhd", "packed_hnd"])),
        padding_tokens=draw(st.integers(0, 3)),
        shared_prefix_blocks=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**16)),
        # vLLM's fused static fp8 quantisation of the output
        fp8_output=draw(st.sampled_from([False, False, False, True])),
        # each row's log-sum-exp too (what decode context parallelism merges)
        returns_lse=draw(st.booleans()),
    )
    return q_lens, seq_lens, features, shape


def check_against_reference(case):
    q_lens, seq_lens, features, shape = case
    device = "cuda" if HAS_GPU else "cpu"
    num_q_heads = shape["num_kv_heads"] * shape["group"]
    window, chunk_lookback = features["sliding_window"], features["chunk_lookback"]
    if window is None or chunk_lookback is None or chunk_lookback >= window:
        chunk_lookback = None  # a chunked window needs W // (L + 1) >= 1
    if features["mm_prefix_ranges"] is not None:
        chunk_lookback = None  # not combined (paged_attention refuses it)
    prefixes = features["rswa_prefix_lens"]
    if window is None or features["causal"] is not True or features["mm_prefix_ranges"]:
        prefixes = None  # R-SWA is served with none of these
    if prefixes is not None:
        chunk_lookback = None
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=shape["num_kv_heads"],
        head_size=shape["head_size"],
        block_size=shape["block_size"],
        dtype=shape["dtype"],
        kv_dtype=shape["kv_dtype"],
        device=device,
        layout=shape["layout"],
        sliding_window=features["sliding_window"],
        mm_prefix_ranges=features["mm_prefix_ranges"],
        rswa_prefix_lens=prefixes,
        padding_tokens=shape["padding_tokens"],
        shared_prefix_blocks=shape["shared_prefix_blocks"] if prefixes is None else 0,
        generator=torch.Generator().manual_seed(shape["seed"]),
    )
    gen = torch.Generator().manual_seed(shape["seed"] + 1)
    causal = features["causal"]
    if isinstance(causal, list):
        causal = torch.tensor(causal, dtype=torch.int32, device=device)
    extra = dict(
        causal=causal,
        sliding_window=features["sliding_window"],
        logits_soft_cap=features["logits_soft_cap"],
        chunk_lookback=chunk_lookback,
        alibi_slopes=torch.rand(num_q_heads, generator=gen).to(device)
        if features["alibi"]
        else None,
        alibi_sqrt=features["alibi"] == "sqrt",
        sinks=torch.randn(num_q_heads, generator=gen).to(device) if features["sinks"] else None,
        mm_prefix_ranges=None
        if features["mm_prefix_ranges"] is None
        else torch.tensor(features["mm_prefix_ranges"], dtype=torch.int32, device=device),
        mm_prefix_clamp_sliding_window=features["mm_prefix_clamp_sliding_window"],
        rswa_prefix_lens=None
        if prefixes is None
        else torch.tensor(prefixes, dtype=torch.int32, device=device),
    )
    scale = shape["head_size"] ** -0.5
    out = torch.full_like(batch.q, float("nan"))
    if shape["fp8_output"]:
        out = out.to(torch.float8_e4m3fn)
        extra["out_scale"] = torch.tensor([0.3], device=device)
    lse = expected_lse = None
    if shape["returns_lse"]:
        lse = torch.full((batch.q.shape[0], num_q_heads), float("nan"), device=device)
        expected_lse = lse.clone()
        extra["lse"] = lse
    plan = None
    arch = small_gpu() if features["small_gpu"] and not HAS_GPU else None
    if features["mixed_plan"] or features["batch_invariant"]:
        plan = plan_for_batch(
            q_lens,
            num_tokens=batch.q.shape[0],
            num_q_heads=num_q_heads,
            num_kv_heads=shape["num_kv_heads"],
            head_size=shape["head_size"],
            device=device,
            arch=arch,
            dtype=shape["dtype"],
            batch_invariant=features["batch_invariant"],
            **batch.plan_facts(**extra),
        )
    paged_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        scale=scale,
        plan=plan,
        arch=None if plan else arch,
        **batch.kernel_args(),
        **extra,
    )
    expected = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, out, scale=scale, **batch.kernel_args(),
        **dict(extra, lse=expected_lse),
    )  # fmt: skip
    rows = batch.num_actual_tokens
    assert not out[:rows].float().isnan().any()
    if lse is not None:  # exact products' fp32 scores: only the summation order differs
        torch.testing.assert_close(lse[:rows], expected_lse[:rows], atol=1e-3, rtol=1e-4)
    if shape["fp8_output"]:
        assert_fp8_output_close(out[:rows], expected[:rows])
    else:
        torch.testing.assert_close(
            out[:rows].float(), expected[:rows].float(), **TOLERANCES[shape["dtype"]]
        )


for _shard in range(SHARDS):
    # A fixed seed per shard: every run draws the same examples.
    globals()[f"test_fuzz_against_reference_{_shard}"] = seed(_shard)(
        settings(max_examples=EXAMPLES // SHARDS, deadline=None, database=None)(
            given(batches())(check_against_reference)
        )
    )


# A cache of the inputs' type, int8 or int4 with scales per token and head;
# fp8 stores only on the GPU (the interpreter's fp8 cast rounds wrongly).
ROPE_CACHES = [(None, None), (torch.int8, "token_head"), (INT4_KV_DTYPE, "token_head")]
if HAS_GPU:
    ROPE_CACHES += [(torch.float8_e4m3fn, "tensor"), (torch.float8_e4m3fn, "token_head")]


@st.composite
def rope_writes(draw):
    head_size = draw(st.sampled_from([32, 64, 80, 128, 512]))
    num_kv_heads = draw(st.sampled_from([1, 2, 4]))
    cache_dtype, scaled = draw(st.sampled_from(ROPE_CACHES))
    dtype = draw(st.sampled_from(DTYPES))
    return dict(
        dtype=dtype,
        is_neox=draw(st.booleans()),
        head_size=head_size,
        rotary_dim=draw(st.sampled_from([head_size, head_size // 2, 16])),
        cache_dtype=cache_dtype or dtype,
        scaled=scaled,
        layout=draw(st.sampled_from(["separate", "packed_nhd", "packed_hnd"])),
        num_tokens=draw(st.integers(1, 40)),
        num_q_heads=num_kv_heads * draw(st.sampled_from([1, 3, 8])),
        num_kv_heads=num_kv_heads,
        block_size=draw(st.sampled_from([16, 32])),
        seed=draw(st.integers(0, 2**16)),
    )


@seed(0)
@settings(max_examples=max(EXAMPLES // 8, 16), deadline=None, database=None)
@given(rope_writes())
def test_fuzz_rope_and_write_against_reference(case):
    device = "cuda" if HAS_GPU else "cpu"
    assume(GpuArch.of_device(device).supports_kv_dtype(case["cache_dtype"]))
    check_rope_and_write(**case, device=device)
