# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Kernels against the PyTorch reference.

On a GPU the whole matrix runs (bf16 included). On a CPU-only machine the kernels run in
the Triton interpreter, where each call costs up to a few seconds and bf16
``tl.dot`` is broken, so a representative subset runs in fp32 and fp16: every
query pattern, feature flag, head size, GQA ratio, block size and cache layout
appears in it at least once.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
import torch
from conftest import HAS_GPU

from devtools.batches import (
    TOLERANCES,
    assert_fp8_output_close,
    make_batch,
    mm_prefix_ranges_for,
    plan_for_batch,
    rswa_prefixes_for,
    small_gpu,
)
from vllm.v1.attention.ops.triton_attention import (
    AttentionFeatures,
    GpuArch,
    MixedBatchPlan,
    SplitKVWorkspace,
    paged_attention,
    plan_attention,
    reference_paged_attention,
    write_kv_cache,
)
from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE
from vllm.v1.attention.ops.triton_attention.checks import AttentionCall
from vllm.v1.attention.ops.triton_attention.launch import kernel_launches
from vllm.v1.attention.ops.triton_attention.plan import (
    LONG_QUERY,
    LONG_QUERY_PIPELINED,
    MAX_KV_SPLITS,
    SPLIT_KV_DECODE_PIPELINED,
)

# (name, q_lens, seq_lens): every query pattern the backend produces.
QUERY_PATTERNS = {
    "decode": ([1, 1, 1, 1], [1, 17, 64, 300]),
    "specdecode4": ([4, 4, 4], [4, 33, 129]),
    "specdecode7": ([7, 7], [70, 200]),
    "prefill": ([37, 128], [37, 128]),
    "chunked_prefill": ([48, 16], [150, 97]),  # new tokens on a cached prefix
    "mixed": ([1, 1, 0, 65, 3], [40, 129, 0, 190, 63]),  # decodes, an empty row, chunks
}
FEATURES = {
    "plain": {},
    "non_causal": dict(causal=False),
    "sliding_window": dict(sliding_window=19),
    "non_causal_window": dict(causal=False, sliding_window=19),
    # a causal flag per sequence: every other one bidirectional
    "per_seq_causal": dict(causal="per_seq"),
    "per_seq_causal_window": dict(causal="per_seq", sliding_window=19),
    # multimodal prefix ranges (devtools.batches.mm_prefix_ranges_for): alone, past a
    # window (a 31-key range reaches beyond 19 keys), and kept inside it
    "mm_prefix": dict(mm_prefix_ranges="ranges"),
    "mm_prefix_window": dict(mm_prefix_ranges="ranges", sliding_window=19),
    "mm_prefix_clamped": dict(
        mm_prefix_ranges="ranges", sliding_window=19, mm_prefix_clamp_sliding_window=True
    ),
    # chunked local attention: chunks of 24 // 2 = 12 keys, the query's and the one before
    "chunked_window": dict(sliding_window=24, chunk_lookback=1),
    "chunked_window_non_causal": dict(sliding_window=24, chunk_lookback=1, causal=False),
    # R-SWA: each prompt prefix (rswa_prefixes_for) stays visible beside a 19-key window
    "rswa": dict(sliding_window=19, rswa_prefix_lens="prefixes"),
    "softcap": dict(logits_soft_cap=4.0),
    "alibi": dict(alibi_slopes=True),
    # StepFun Step1's bias: -slope * sqrt(p - j) on past keys, none on later ones
    "alibi_sqrt": dict(alibi_slopes=True, alibi_sqrt=True),
    "alibi_sqrt_non_causal": dict(alibi_slopes=True, alibi_sqrt=True, causal=False),
    "sinks": dict(sinks=True),
    "all": dict(logits_soft_cap=4.0, alibi_slopes=True, sinks=True, sliding_window=33),
}


@dataclasses.dataclass(frozen=True)
class Case:
    pattern: str
    feature: str = "plain"
    dtype: torch.dtype = torch.float16
    kv_dtype: torch.dtype | None = None
    head_size: int = 64
    num_kv_heads: int = 2
    queries_per_kv: int = 4
    block_size: int = 16
    layout: str = "packed_nhd"
    token_head_scales: bool = False  # a scale per token and KV head (int8 always has them)
    fp8_queries: bool = False  # queries quantised to the (fp8) cache's format, a scale per KV head
    fp8_output: bool = False  # fused static fp8 output quantisation (an e4m3 out and its scale)
    returns_lse: bool = False  # each row's log-sum-exp stored too (decode context parallelism)

    def id(self) -> str:
        kv = "" if self.kv_dtype is None else f"-kv_{str(self.kv_dtype)[6:]}"
        kv = kv.replace("uint8", "int4")  # two 4-bit codes per byte
        kv += "_per_token_head" if self.token_head_scales else ""
        kv += "-fp8_queries" if self.fp8_queries else ""
        kv += "-fp8_output" if self.fp8_output else ""
        kv += "-lse" if self.returns_lse else ""
        return (
            f"{self.pattern}-{self.feature}-{str(self.dtype)[6:]}{kv}-d{self.head_size}"
            f"-kv{self.num_kv_heads}x{self.queries_per_kv}-bs{self.block_size}-{self.layout}"
        )


def _cpu_cases() -> list[Case]:
    cases = [Case(pattern) for pattern in QUERY_PATTERNS]
    cases += [Case("mixed", feature) for feature in FEATURES if feature != "plain"]
    cases += [Case("decode", feature) for feature in FEATURES if feature != "plain"]
    # non-causal sequences of many tokens: on the long-query and the split-KV kernel
    cases += [Case(p, "per_seq_causal_window") for p in ("chunked_prefill", "specdecode4")]
    cases += [Case(p, "mm_prefix_window") for p in ("chunked_prefill", "specdecode4")]
    cases += [Case(p, "rswa") for p in ("chunked_prefill", "specdecode4", "prefill")]
    cases += [Case(p, dtype=torch.float32) for p in ("decode", "prefill", "mixed")]
    cases += [Case("mixed", head_size=d) for d in (32, 80, 128, 256, 512)]
    cases += [Case("decode", head_size=d) for d in (80, 256)]
    cases += [Case(p, "all", head_size=512) for p in ("decode", "chunked_prefill")]
    cases += [Case(p, queries_per_kv=g) for p in ("mixed", "decode") for g in (1, 7, 8)]
    cases += [Case("mixed", block_size=b) for b in (32, 64)]
    cases += [
        Case(p, layout=layout) for p in ("mixed", "decode") for layout in ("packed_hnd", "separate")
    ]
    cases += [Case(p, kv_dtype=torch.float8_e4m3fn) for p in ("decode", "mixed")]
    cases += [Case(p, kv_dtype=torch.float8_e5m2) for p in ("decode", "chunked_prefill")]
    cases += [Case("specdecode4", kv_dtype=torch.float8_e4m3fnuz, feature="all")]
    # per-token-head quantised caches (vLLM's int8/fp8_per_token_head)
    cases += [Case(p, kv_dtype=torch.int8, token_head_scales=True) for p in QUERY_PATTERNS]
    cases += [Case("mixed", "all", kv_dtype=torch.int8, token_head_scales=True, head_size=80)]
    cases += [Case("decode", kv_dtype=torch.float8_e4m3fn, token_head_scales=True)]
    # int4_per_token_head: rotated vectors (Hadamard blocks of 64, and of 16 at head 80)
    cases += [Case(p, kv_dtype=INT4_KV_DTYPE, token_head_scales=True) for p in QUERY_PATTERNS]
    cases += [Case("mixed", "all", kv_dtype=INT4_KV_DTYPE, token_head_scales=True, head_size=80)]
    # fp8 queries (vLLM's for an fp8 cache): a scale per KV head
    fp8_queries = dict(kv_dtype=torch.float8_e4m3fn, fp8_queries=True)
    cases += [Case(p, **fp8_queries) for p in ("decode", "specdecode4", "chunked_prefill")]
    cases += [Case("mixed", "all", **fp8_queries, head_size=80)]
    # fused fp8 output: split-KV with and without a merge, long-query, mixed
    cases += [Case(p, fp8_output=True) for p in ("decode", "chunked_prefill", "mixed")]
    cases += [Case("mixed", "all", kv_dtype=torch.float8_e4m3fn, fp8_output=True, head_size=80)]
    cases += [Case("decode", kv_dtype=torch.int8, token_head_scales=True, fp8_output=True)]
    # log-sum-exps: split-KV with and without a merge, long-query, mixed, sinks and softcap
    cases += [Case(p, returns_lse=True) for p in ("decode", "specdecode4", "chunked_prefill")]
    cases += [Case("mixed", "all", returns_lse=True, head_size=80)]
    cases += [Case("decode", kv_dtype=INT4_KV_DTYPE, token_head_scales=True, returns_lse=True)]
    return cases


def _gpu_cases() -> list[Case]:
    cases = []
    for pattern, feature, dtype in itertools.product(
        QUERY_PATTERNS, FEATURES, (torch.float16, torch.bfloat16, torch.float32)
    ):
        cases.append(Case(pattern, feature, dtype))
    shapes = itertools.product((32, 64, 80, 96, 112, 128, 192, 256, 512), (1, 4, 7, 8, 16))
    block_sizes = itertools.cycle((16, 32, 64))
    for (head_size, group), block_size in zip(shapes, block_sizes, strict=False):
        for pattern in ("decode", "specdecode4", "prefill", "mixed"):
            cases.append(
                Case(pattern, "plain", torch.bfloat16, None, head_size, 2, group, block_size)
            )
    for pattern, feature in itertools.product(QUERY_PATTERNS, FEATURES):
        cases.append(Case(pattern, feature, torch.bfloat16, head_size=512))  # Gemma 4's globals
    for pattern, head_size in itertools.product(QUERY_PATTERNS, (128, 256, 512)):
        # 4-byte tiles: the plan halves the tuned 2-byte tiles to fit shared memory
        cases.append(Case(pattern, "plain", torch.float32, None, head_size))
    for pattern, layout, dtype in itertools.product(
        QUERY_PATTERNS, ("packed_hnd", "separate"), (torch.float16, torch.bfloat16)
    ):
        cases.append(Case(pattern, "sliding_window", dtype, layout=layout))
    arch = GpuArch.of_device("cuda") if HAS_GPU else None
    token_head = dict(token_head_scales=True)
    for pattern, feature, dtype, head_size in itertools.product(
        QUERY_PATTERNS, ("plain", "all"), (torch.float16, torch.bfloat16), (64, 128, 512)
    ):
        for kv_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2):
            if arch.supports_kv_dtype(kv_dtype):
                cases.append(Case(pattern, feature, dtype, kv_dtype, head_size))
                cases.append(Case(pattern, feature, dtype, kv_dtype, head_size, **token_head))
        cases.append(Case(pattern, feature, dtype, torch.int8, head_size, **token_head))
        cases.append(Case(pattern, feature, dtype, INT4_KV_DTYPE, head_size, **token_head))
    for pattern, feature, head_size in itertools.product(
        QUERY_PATTERNS, ("plain", "all"), (64, 128, 256, 512)
    ):
        for kv_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
            if arch.supports_kv_dtype(kv_dtype):  # fp8 queries: vLLM's e4m3 formats
                for dtype in (torch.float16, torch.bfloat16):
                    cases.append(
                        Case(pattern, feature, dtype, kv_dtype, head_size, fp8_queries=True)
                    )
    for pattern, feature, dtype, head_size in itertools.product(
        QUERY_PATTERNS, ("plain", "all"), (torch.float16, torch.bfloat16), (64, 128, 256, 512)
    ):
        if arch.supports_kv_dtype(torch.float8_e4m3fn):  # fp8 output: vLLM's fused quantisation
            fp8 = dict(kv_dtype=torch.float8_e4m3fn, head_size=head_size, fp8_output=True)
            cases.append(Case(pattern, feature, dtype, head_size=head_size, fp8_output=True))
            cases.append(Case(pattern, feature, dtype, **fp8))
            cases.append(Case(pattern, feature, dtype, **fp8, fp8_queries=True))
    for pattern, feature, dtype, head_size in itertools.product(
        QUERY_PATTERNS, ("plain", "all", "softcap"), (torch.float16, torch.bfloat16), (64, 128, 512)
    ):
        cases.append(Case(pattern, feature, dtype, head_size=head_size, returns_lse=True))
    for pattern in QUERY_PATTERNS:  # Hadamard blocks below the head size
        cases.append(Case(pattern, "all", torch.bfloat16, INT4_KV_DTYPE, 80, **token_head))
        cases.append(Case(pattern, "plain", torch.float16, INT4_KV_DTYPE, 96, **token_head))
    return list(dict.fromkeys(cases))  # the shape sweep meets the first cases at d64 GQA 4


CASES = _gpu_cases() if HAS_GPU else _cpu_cases()


def _feature_args(feature: str, num_q_heads: int, device, q_lens=(), seq_lens=()) -> dict:
    args = dict(FEATURES[feature])
    gen = torch.Generator().manual_seed(1)
    if args.get("causal") == "per_seq":
        args["causal"] = (torch.arange(len(q_lens), dtype=torch.int32) % 2).to(device)
    if args.get("mm_prefix_ranges") == "ranges":
        ranges = mm_prefix_ranges_for(q_lens, seq_lens)
        args["mm_prefix_ranges"] = torch.tensor(ranges, dtype=torch.int32, device=device)
    if args.get("rswa_prefix_lens") == "prefixes":
        prefixes = rswa_prefixes_for(q_lens, seq_lens)
        args["rswa_prefix_lens"] = torch.tensor(prefixes, dtype=torch.int32, device=device)
    if args.get("alibi_slopes"):
        slopes = 2.0 ** (-8.0 * torch.arange(1, num_q_heads + 1) / num_q_heads)
        args["alibi_slopes"] = slopes.to(device=device, dtype=torch.float32)
    if args.get("sinks"):
        args["sinks"] = torch.randn(num_q_heads, generator=gen).to(device) * 2
    return args


# fp8 queries: q.k of fp8 values, exact in fp32, but Hopper's fp8 tensor cores
# add products with ~14 mantissa bits (scores ~10: ~1e-3 off), then P and V in fp16
FP8_QUERY_TOLERANCE = dict(atol=1e-2, rtol=1e-2)


def _tolerance(case: Case) -> dict:
    return FP8_QUERY_TOLERANCE if case.fp8_queries else TOLERANCES[case.dtype]


FP8_OUTPUT_SCALE = 0.3  # outputs of N(0, 1) attention span about +-2: +-7 in fp8


def run_case(
    case: Case, device, seed: int = 0, padding_tokens: int = 3, mixed_plan=False, arch=None
):
    """Our output and the reference's on the case's batch, and for a case that
    returns log-sum-exps ours and the reference's (else None). ``arch``: the GPU
    to plan for; by default the device's own, and on the CPU ``small_gpu``."""
    if arch is None and not HAS_GPU:
        arch = small_gpu(case.kv_dtype)
    q_lens, seq_lens = QUERY_PATTERNS[case.pattern]
    num_q_heads = case.num_kv_heads * case.queries_per_kv
    features = _feature_args(case.feature, num_q_heads, device, q_lens, seq_lens)
    mm_ranges = features.get("mm_prefix_ranges")
    prefixes = features.get("rswa_prefix_lens")
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=case.num_kv_heads,
        head_size=case.head_size,
        block_size=case.block_size,
        dtype=case.dtype,
        kv_dtype=case.kv_dtype,
        token_head_scales=case.token_head_scales,
        device=device,
        layout=case.layout,
        sliding_window=features.get("sliding_window"),
        mm_prefix_ranges=mm_ranges.tolist() if mm_ranges is not None else None,
        rswa_prefix_lens=prefixes.tolist() if prefixes is not None else None,
        padding_tokens=padding_tokens,
        generator=torch.Generator().manual_seed(seed),
    )
    scale = case.head_size**-0.5
    out = torch.full_like(batch.q, float("nan"))  # every valid row must be written
    q = batch.q
    if case.fp8_queries:  # as vLLM quantises them for an fp8 cache (per KV head here)
        gen = torch.Generator().manual_seed(seed + 7)
        q_scale = (torch.rand(case.num_kv_heads, generator=gen) * 0.2 + 0.1).to(device)
        fp8_max = torch.finfo(case.kv_dtype).max
        per_q_head = q_scale.repeat_interleave(case.queries_per_kv)[:, None]
        q = (batch.q.float() / per_q_head).clamp(-fp8_max, fp8_max).to(case.kv_dtype)
        features = dict(features, q_scale=q_scale)
    if case.fp8_output:  # vLLM's fused static quantisation: an fp8 out and its scale
        out = torch.full_like(batch.q, float("nan"), dtype=torch.float8_e4m3fn)
        features = dict(features, out_scale=torch.tensor([FP8_OUTPUT_SCALE], device=device))
    lse = expected_lse = None
    if case.returns_lse:
        lse = torch.full((batch.q.shape[0], num_q_heads), float("nan"), device=device)
        expected_lse = lse.clone()
        features = dict(features, lse=lse)
    plan = None
    if mixed_plan:
        plan = plan_for_batch(
            q_lens,
            num_tokens=batch.q.shape[0],
            num_q_heads=num_q_heads,
            num_kv_heads=case.num_kv_heads,
            head_size=case.head_size,
            device=device,
            dtype=q.dtype,
            arch=arch,
            **batch.plan_facts(**features),
        )
        assert isinstance(plan, MixedBatchPlan)
    paged_attention(
        q,
        batch.k_cache,
        batch.v_cache,
        out,
        scale=scale,
        plan=plan,
        arch=None if plan else arch,
        **batch.kernel_args(),
        **features,
    )
    if case.returns_lse:
        features = dict(features, lse=expected_lse)
    expected = reference_paged_attention(
        q, batch.k_cache, batch.v_cache, out=out, scale=scale, **batch.kernel_args(), **features
    )
    rows = batch.num_actual_tokens
    lses = (lse[:rows], expected_lse[:rows]) if case.returns_lse else None
    return out[:rows], expected[:rows], lses


# Log-sum-exps are of fp32 scores of exact products (16-bit inputs): only the
# summation order differs.
LSE_TOLERANCE = dict(atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_paged_attention_matches_reference(case: Case, device):
    out, expected, lses = run_case(case, device)
    assert not out.float().isnan().any(), "a valid output row is NaN or was never written"
    if case.fp8_output:
        assert_fp8_output_close(out, expected)
    else:
        torch.testing.assert_close(out.float(), expected.float(), **_tolerance(case))
    if lses is not None:
        torch.testing.assert_close(*lses, **LSE_TOLERANCE)


def test_int4_attention_matches_vllm(device, vllm_int4, monkeypatch):
    """Our attention over an int4_per_token_head cache our write filled equals
    vLLM 0.34.0's own int4 attention (``unified_attention_int4``, where vLLM is
    installed) over the same cache, decodes and a prefill chunk: the rotation,
    codes and zero points mean the same to both."""
    upstream = vllm_int4
    monkeypatch.setattr(upstream, "_HADACORE_AVAILABLE", False)  # vLLM's CUDA kernel
    gen = torch.Generator().manual_seed(5)
    num_q_heads, num_kv_heads, head_size, block_size = 8, 2, 64, 16
    q_lens, seq_lens = [1, 1, 24], [40, 70, 50]
    batch = make_batch(
        q_lens, seq_lens, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
        head_size=head_size, block_size=block_size, dtype=torch.float16, device=device,
        kv_dtype=INT4_KV_DTYPE, generator=gen,
    )  # fmt: skip
    keys = torch.randn(sum(seq_lens), num_kv_heads, head_size, generator=gen).half()
    slots = torch.cat(
        [
            batch.block_table[seq, torch.arange(n) // block_size].long().cpu() * block_size
            + torch.arange(n) % block_size
            for seq, n in enumerate(seq_lens)
        ]
    )
    keys, values, slots = keys.to(device), keys.flip(0).to(device), slots.to(device)
    write_kv_cache(keys, values, batch.k_cache, batch.v_cache, slots, k_scale=batch.k_scale,
                   v_scale=batch.v_scale)  # fmt: skip
    q = batch.q[: batch.num_actual_tokens]
    ours, theirs = torch.zeros_like(q), torch.zeros_like(q)
    paged_attention(q, batch.k_cache, batch.v_cache, ours, scale=head_size**-0.5,
                    **batch.kernel_args())  # fmt: skip
    segments = 16
    upstream.unified_attention_int4(
        q, batch.k_cache, batch.v_cache, theirs, cu_seqlens_q=batch.query_start_loc,
        max_seqlen_q=batch.max_query_len, seqused_k=batch.seq_lens,
        max_seqlen_k=batch.max_seq_len, softmax_scale=head_size**-0.5, window_size=(-1, -1),
        block_table=batch.block_table, softcap=0, sinks=None, alibi_slopes=None,
        use_alibi_sqrt=False, qq_bias=None, output_scale=None, mm_prefix_range=None,
        k_scale_cache=batch.k_scale, v_scale_cache=batch.v_scale, seq_threshold_3D=0,
        num_par_softmax_segments=segments,
        softmax_segm_output=torch.empty(q.shape[0], num_q_heads, segments, head_size),
        softmax_segm_max=torch.empty(q.shape[0], num_q_heads, segments),
        softmax_segm_expsum=torch.empty(q.shape[0], num_q_heads, segments),
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, **TOLERANCES[torch.float16])


@pytest.mark.parametrize("pattern", ["decode", "chunked_prefill", "mixed"])
def test_device_plan_matches_reference(pattern, device):
    """The plan each device makes for itself; on the CPU the interpreter's (one
    program per sequence and KV head), which serves the development platform."""
    out, expected, _ = run_case(Case(pattern, "all"), device, arch=GpuArch.of_device(device))
    assert not out.isnan().any(), "a valid output row is NaN or was never written"
    torch.testing.assert_close(out.float(), expected.float(), **TOLERANCES[torch.float16])


MIXED_CASES = (
    [Case("mixed", f, d) for f in FEATURES for d in (torch.float16, torch.bfloat16)]
    + [
        Case("mixed", "plain", torch.bfloat16, kv, 128)
        for kv in (torch.float8_e4m3fn,)
        if GpuArch.of_device("cuda").supports_kv_dtype(kv)
    ]
    if HAS_GPU
    else [Case("mixed"), Case("mixed", "all"), Case("mixed", queries_per_kv=7, head_size=80)]
) + [Case("mixed", "all", returns_lse=True, head_size=80)]


@pytest.mark.parametrize("case", MIXED_CASES, ids=Case.id)
def test_mixed_batch_plan_matches_reference(case: Case, device):
    """Decodes on split-KV and the rest on long-query, in one paged_attention call."""
    out, expected, lses = run_case(case, device, mixed_plan=True)
    assert not out.isnan().any(), "a valid output row is NaN or was never written"
    torch.testing.assert_close(out.float(), expected.float(), **_tolerance(case))
    if lses is not None:  # each kernel stores its own rows'
        torch.testing.assert_close(*lses, **LSE_TOLERANCE)


@pytest.mark.parametrize("flags", ["call", "per_seq"])
def test_non_causal_window_is_two_sided(device, flags):
    """Without causality a window of W keys reaches both ways: position p sees
    keys p-W+1 .. p+W-1. Equal scores and one-hot values make each output row
    the uniform average of exactly the keys it sees. The first sequence is
    non-causal; with per-sequence flags the second one is causal."""
    seq_len, window, head = 20, 3, 32
    v_cache = torch.zeros(2, 16, 1, head)
    v_cache.view(32, head)[torch.arange(seq_len), torch.arange(seq_len)] = 1.0
    causal = False if flags == "call" else torch.tensor([0, 1], dtype=torch.int32, device=device)
    num_seqs = 1 if flags == "call" else 2
    q = torch.zeros(num_seqs * seq_len, 1, head, device=device)
    out = torch.empty_like(q)
    paged_attention(
        q,
        torch.zeros_like(v_cache).to(device),
        v_cache.to(device),
        out,
        query_start_loc=torch.arange(num_seqs + 1, dtype=torch.int32, device=device) * seq_len,
        seq_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device=device),
        block_table=torch.tensor([[0, 1]] * num_seqs, dtype=torch.int32, device=device),
        max_query_len=seq_len,
        max_seq_len=seq_len,
        scale=1.0,
        causal=causal,
        sliding_window=window,
    )
    for seq in range(num_seqs):
        for p in range(seq_len):
            seen = out[seq * seq_len + p, 0, :seq_len].cpu() > 0
            last = p if seq == 1 else min(p + window - 1, seq_len - 1)
            expected = torch.zeros(seq_len, dtype=torch.bool)
            expected[max(p - window + 1, 0) : last + 1] = True
            assert torch.equal(seen, expected), (seq, p, seen.nonzero().flatten().tolist())


@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_size", [(8, 2, 64), (14, 2, 80)])
def test_split_kv_and_single_program_agree(device, num_q_heads, num_kv_heads, head_size):
    """Any split count (a small batch on a big GPU) must equal one split exactly
    enough, whatever tile of heads and dimensions each merge program takes."""
    case = Case("decode", "all", torch.float32, head_size=head_size)
    q_lens, seq_lens = [1, 1], [300, 1000]
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=16,
        dtype=case.dtype,
        device=device,
    )
    features = _feature_args("all", num_q_heads, device)
    results = []
    for units in (1, 6, 1000):  # 1 split, a few (several heads per merge program), 128
        arch = GpuArch("test", "test", units)
        plan = plan_attention(
            num_tokens=2,
            num_seqs=2,
            max_query_len=1,
            num_q_heads=num_q_heads,
            num_kv_heads=num_kv_heads,
            head_size=head_size,
            arch=arch,
            dtype=case.dtype,
        )
        out = torch.empty_like(batch.q)
        workspace = SplitKVWorkspace.allocate(plan, device)
        paged_attention(
            batch.q,
            batch.k_cache,
            batch.v_cache,
            out,
            scale=0.125,
            plan=plan,
            workspace=workspace,
            **batch.kernel_args(),
            **features,
        )
        results.append((plan.num_kv_splits, plan.merge_tile, out))
    (one, _, out_one), (few, few_tile, out_few), (many, many_tile, out_many) = results
    assert one == 1 and 1 < few < 8 and many == MAX_KV_SPLITS
    assert few_tile[0] > 1 and many_tile[1] < batch.q.shape[2]
    torch.testing.assert_close(out_one, out_few, **TOLERANCES[torch.float32])
    torch.testing.assert_close(out_one, out_many, **TOLERANCES[torch.float32])


def _check_forced_kernel(batch, plan, causal, kernel_name, **features):
    """``plan`` runs ``kernel_name`` first, and its output matches the reference
    on every valid row (NaN-filled beforehand: a row never written fails);
    ``features``: keyword arguments of ``paged_attention`` (window, ranges...)."""
    call = AttentionCall(
        q=batch.q,
        k_cache=batch.k_cache,
        v_cache=batch.v_cache,
        out=batch.q,
        query_start_loc=batch.query_start_loc,
        seq_lens=batch.seq_lens,
        block_table=batch.block_table,
        scale=0.1,
        causal=causal,
        **features,
    )
    launch, *merge = kernel_launches(call, plan)
    assert launch.kernel.__name__ == kernel_name
    assert all(m.kernel.__name__ == "merge_kv_splits_kernel" for m in merge)
    expected = reference_paged_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        scale=0.1,
        causal=causal,
        **features,
        **batch.kernel_args(),
    )
    rows = batch.num_actual_tokens
    out = torch.full_like(batch.q, float("nan"))
    paged_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        scale=0.1,
        causal=causal,
        plan=plan,
        **features,
        **batch.kernel_args(),
    )
    assert not out[:rows].isnan().any(), "a valid output row is NaN or was never written"
    torch.testing.assert_close(
        out[:rows].float(), expected[:rows].float(), **TOLERANCES[batch.q.dtype]
    )


NVIDIA_SM80 = HAS_GPU and torch.version.hip is None and torch.cuda.get_device_capability() >= (8, 0)


_PIPELINED_DECODE_CASES = [
    ("decode", 128, 4, 16, torch.bfloat16, True),
    ("decode", 64, 1, 32, torch.float16, True),
    ("decode", 256, 8, 64, torch.bfloat16, True),
    ("specdecode4", 128, 7, 16, torch.bfloat16, True),
    ("specdecode7", 32, 2, 16, torch.float16, True),
    ("decode", 128, 4, 16, torch.bfloat16, False),
]


@pytest.mark.skipif(not NVIDIA_SM80, reason="pipelined_decode.py targets NVIDIA sm_80+")
@pytest.mark.parametrize(
    "pattern,head_size,queries_per_kv,block_size,dtype,causal,tiles",
    [
        (*case, tiles)
        for case in _PIPELINED_DECODE_CASES
        for tiles in ((32, 2), (64, 3), (32, 4), (64, 4))
        if case[1] * tiles[0] * tiles[1] <= 256 * 64 * 3
    ],  # (64, 4) at head 256 needs 256 KB
)
def test_pipelined_decode_matches_reference(
    pattern, head_size, queries_per_kv, block_size, dtype, causal, tiles, device
):
    """The Gluon split-KV kernel on every shape it covers, with one split and
    several (the plan sets it only where it measured faster on sm_90)."""
    q_lens, seq_lens = QUERY_PATTERNS[pattern]
    num_q_heads = 2 * queries_per_kv
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=2,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
        device=device,
        padding_tokens=3,
    )
    for units in (1, 132):
        plan = plan_attention(
            num_tokens=batch.q.shape[0],
            num_seqs=len(q_lens),
            max_query_len=max(q_lens),
            num_q_heads=num_q_heads,
            num_kv_heads=2,
            head_size=head_size,
            arch=GpuArch("cuda", GpuArch.of_device(device).name, units),
            dtype=dtype,
        )
        plan = dataclasses.replace(
            plan, kernel=SPLIT_KV_DECODE_PIPELINED, kv_tile_size=tiles[0], kv_buffers=tiles[1]
        )
        _check_forced_kernel(batch, plan, causal, "split_kv_decode_pipelined_kernel")


NVIDIA_SM90 = HAS_GPU and torch.version.hip is None and torch.cuda.get_device_capability() == (9, 0)


_PIPELINED_LONG_QUERY_CASES = [
    ([37, 300], [37, 300], 128, 4, 16, torch.bfloat16, True),  # prefill, ragged ends
    ([48, 16, 200], [450, 97, 1000], 128, 7, 16, torch.bfloat16, True),  # chunks on a prefix
    ([1, 1, 0, 65, 3], [40, 129, 0, 190, 63], 64, 1, 32, torch.float16, True),  # mixed rows
    ([130, 9], [130, 9], 64, 4, 16, torch.float16, False),
    ([70], [2000], 128, 8, 64, torch.float16, False),
]
# Head 256 keeps Q in shared memory: 64-key tiles fit with one score tile in
# registers (two buffers), 32-key tiles with two.
_PIPELINED_LONG_QUERY_D256_CASES = [
    ([37, 300], [37, 300], 256, 2, 16, torch.bfloat16, True),
    ([48, 16, 0, 200], [450, 97, 0, 1000], 256, 4, 32, torch.float16, True),
    ([70], [600], 256, 1, 16, torch.bfloat16, False),
]


# (q_lens, seq_lens, head, queries per KV head, block, dtype, causal, window,
# softcap, tiles): windows narrower than a key tile and wider, cache blocks
# larger than a key tile (the first tile starts a block), both key loops.
_PIPELINED_LONG_QUERY_FEATURE_CASES = [
    ([300, 37], [700, 37], 128, 4, 16, torch.bfloat16, True, 19, None, (64, 4, 0)),
    ([300, 37], [700, 37], 128, 4, 128, torch.bfloat16, True, 200, 30.0, (64, 4, 0)),
    ([130, 9], [1000, 9], 64, 4, 16, torch.float16, False, 77, None, (64, 4, 4)),
    ([37, 300], [37, 300], 64, 8, 16, torch.bfloat16, True, None, 4.0, (64, 4, 4)),
    ([200, 16], [1000, 97], 256, 2, 16, torch.bfloat16, True, 150, 50.0, (64, 2, 0)),
    ([70], [600], 256, 1, 32, torch.float16, False, None, 20.0, (64, 2, 0)),
    ([64, 1], [4000, 300], 256, 2, 128, torch.bfloat16, True, 1000, None, (64, 2, 0)),
]


def _pipelined_long_query_plan(batch, num_seqs, head_size, tiles):
    """The device's plan for ``batch``, forced onto the Gluon long-query kernel
    with ``tiles`` (key tile, buffers, FMA exp2 share)."""
    num_tokens, num_q_heads, _ = batch.q.shape
    plan = plan_attention(
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_query_len=batch.max_query_len,
        num_q_heads=num_q_heads,
        num_kv_heads=batch.k_cache.shape[2],
        head_size=head_size,
        arch=GpuArch.of_device(batch.q.device),
        dtype=batch.q.dtype,
    )
    tile, buffers, fma_exp2_every = tiles
    return dataclasses.replace(
        plan,
        kernel=LONG_QUERY_PIPELINED,
        kv_tile_size=tile,
        kv_buffers=buffers,
        fma_exp2_every=fma_exp2_every,
        block_m=128,
        num_warps=8,
    )


@pytest.mark.skipif(not NVIDIA_SM90, reason="pipelined_long_query.py targets NVIDIA sm_90")
@pytest.mark.parametrize(
    "q_lens,seq_lens,head_size,queries_per_kv,block_size,dtype,causal,window,soft_cap,tiles",
    [
        (*case, None, None, tiles)
        for case in _PIPELINED_LONG_QUERY_CASES
        for tiles in ((64, 4, 0), (64, 6, 4), (64, 2, 4))
    ]
    + [
        (*case, None, None, tiles)
        for case in _PIPELINED_LONG_QUERY_D256_CASES
        for tiles in ((64, 2, 0), (64, 2, 4), (32, 4, 0))
    ]
    + _PIPELINED_LONG_QUERY_FEATURE_CASES,
)
def test_pipelined_long_query_matches_reference(
    q_lens,
    seq_lens,
    head_size,
    queries_per_kv,
    block_size,
    dtype,
    causal,
    window,
    soft_cap,
    tiles,
    device,
):
    """The Gluon long-query kernel on shapes it covers: several key tiles per
    program, the causal diagonal, spare Q tiles, empty rows, both key loops
    (two buffers, or four and more), exp2 on the FMA units or not (the plan
    sets it only where it measured faster on sm_90); sliding window (tiles
    wholly before it skipped, its edge masked) and softcap, which Gemma-2's
    layers have."""
    num_q_heads = 2 * queries_per_kv
    # With a window, blocks out of every query's window are NaN, as a reused
    # freed block might hold: the kernel must not read them.
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=2,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
        device=device,
        sliding_window=window,
        padding_tokens=3,
    )
    plan = _pipelined_long_query_plan(batch, len(q_lens), head_size, tiles)
    _check_forced_kernel(
        batch,
        plan,
        causal,
        "long_query_pipelined_kernel",
        sliding_window=window,
        logits_soft_cap=soft_cap,
    )


# (feature, head, tiles): both key loops at each head the plan sends there.
_PIPELINED_LONG_QUERY_MASK_CASES = [
    (feature, head_size, tiles)
    for feature in (
        "per_seq_causal",
        "per_seq_causal_window",
        "mm_prefix",
        "mm_prefix_window",
        "mm_prefix_clamped",
    )
    for head_size, tiles in (
        (64, (64, 4, 4)),
        (128, (64, 4, 0)),
        (128, (64, 2, 0)),
        (256, (64, 2, 0)),
    )
]


@pytest.mark.skipif(not NVIDIA_SM90, reason="pipelined_long_query.py targets NVIDIA sm_90")
@pytest.mark.parametrize("feature,head_size,tiles", _PIPELINED_LONG_QUERY_MASK_CASES)
def test_pipelined_long_query_masks(feature, head_size, tiles, device):
    """Per-sequence causal flags and multimodal ranges in the Gluon long-query
    kernel: ranges across the cached prefix and the new chunk, past the
    keys cached so far, reaching further back than the window or clamped to
    it; a bidirectional sequence with a two-sided window. Prompts of several
    key tiles, chunks on a prefix and a decode row beside them."""
    q_lens, seq_lens = [300, 150, 1, 37], [300, 600, 90, 500]
    num_q_heads = 2 * 4
    features = _feature_args(feature, num_q_heads, device, q_lens, seq_lens)
    mm_ranges = features.get("mm_prefix_ranges")
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=2,
        head_size=head_size,
        block_size=16,
        dtype=torch.bfloat16,
        device=device,
        sliding_window=features.get("sliding_window"),
        mm_prefix_ranges=mm_ranges.tolist() if mm_ranges is not None else None,
        padding_tokens=3,
    )
    plan = _pipelined_long_query_plan(batch, len(q_lens), head_size, tiles)
    causal = features.pop("causal", True)
    _check_forced_kernel(batch, plan, causal, "long_query_pipelined_kernel", **features)


def test_long_query_kernel_handles_decode_rows(device):
    """The long-query kernels are correct for q_len 1 too (mixed batches rely on
    it): the one the plan picks, and the portable one."""
    q_lens, seq_lens = [1, 9, 1], [50, 70, 3]
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=4,
        num_kv_heads=1,
        head_size=64,
        block_size=16,
        dtype=torch.float16,
        device=device,
    )
    expected = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, scale=0.125, **batch.kernel_args()
    )
    rows = batch.num_actual_tokens
    kernels = set()
    for features in (AttentionFeatures(), AttentionFeatures(alibi=True)):  # (portable only)
        plan = plan_attention(
            num_tokens=batch.q.shape[0],
            num_seqs=3,
            max_query_len=9,
            num_q_heads=4,
            num_kv_heads=1,
            head_size=64,
            arch=GpuArch.of_device(device),
            dtype=batch.q.dtype,
            features=features,
        )
        assert plan.kernel in (LONG_QUERY, LONG_QUERY_PIPELINED)
        kernels.add(plan.kernel)
        out = torch.empty_like(batch.q)
        paged_attention(
            batch.q,
            batch.k_cache,
            batch.v_cache,
            out,
            scale=0.125,
            plan=plan,
            **batch.kernel_args(),
        )
        torch.testing.assert_close(out[:rows], expected[:rows], **TOLERANCES[torch.float16])
    assert LONG_QUERY in kernels


@pytest.mark.parametrize("seed", range(3 if not HAS_GPU else 30))
def test_random_batches(seed, device):
    """Random lengths (incl. empty rows) on random shapes; fixed seeds, no reruns."""
    rng = random.Random(seed)
    num_seqs = rng.randint(1, 5)
    decode = rng.random() < 0.5
    q_lens = [rng.choice([0, 1, 1, 2]) if decode else rng.randint(0, 90) for _ in range(num_seqs)]
    seq_lens = [q + rng.randint(0, 150) if q else 0 for q in q_lens]
    case_dtype = torch.float32 if not HAS_GPU else rng.choice([torch.float16, torch.bfloat16])
    head_size = rng.choice([32, 64, 80, 128])
    num_kv_heads, group = rng.choice([1, 2]), rng.choice([1, 3, 4, 8])
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_kv_heads * group,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=rng.choice([16, 32]),
        dtype=case_dtype,
        device=device,
        layout=rng.choice(["separate", "packed_nhd", "packed_hnd"]),
        padding_tokens=rng.randint(0, 4),
        generator=torch.Generator().manual_seed(seed),
    )
    out = torch.full_like(batch.q, float("nan"))
    paged_attention(
        batch.q, batch.k_cache, batch.v_cache, out, scale=head_size**-0.5, **batch.kernel_args()
    )
    expected = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, scale=head_size**-0.5, **batch.kernel_args()
    )
    rows = batch.num_actual_tokens
    torch.testing.assert_close(
        out[:rows].float(), expected[:rows].float(), **TOLERANCES[case_dtype]
    )
