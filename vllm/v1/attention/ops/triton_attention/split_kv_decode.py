# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Split-KV ("flash-decoding") attention for short queries, and its merge.

Decode (q_len 1) and speculative-decode verification (q_len 2..8) read a whole
context for a handful of query rows: the work is streaming K and V, and one
program per (sequence, KV head) leaves most of the GPU idle when the batch is
small. So each sequence's keys are cut into ``num_kv_splits`` contiguous
ranges, one program each; every program writes its partial output
(normalised) and its log2-sum-exp, and ``merge_kv_splits_kernel`` combines the
partials exactly. ``num_kv_splits`` is fixed per plan (from the batch size and
the GPU), while the length of each range follows the sequence's own length in
the kernel, so the launch is the same for every context length: safe to
capture in a CUDA/HIP graph. With one split the kernel writes the output
directly and no merge runs.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .jit_helpers import (
    attend_key_tiles,
    cache_columns,
    fold_split,
    init_softmax_state,
    load_qk_scale,
    load_v_scale,
    mark_empty_splits,
    mm_prefix_rows,
    normalised_output,
    output_values,
    query_rows,
    rotate_rows,
    split_count,
    split_key_range,
    split_lse,
    split_partial,
    store_lse,
    store_split_result,
    unrotate_values,
    widen_key_range,
    window_start,
)


@triton.jit
def split_kv_decode_kernel(
    # pointers
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    partial_out_ptr,  # [num_tokens, num_q_heads, NUM_KV_SPLITS, HEAD_PAD] float32
    partial_lse_ptr,  # [num_tokens, num_q_heads, NUM_KV_SPLITS] float32, log2 domain
    query_start_loc_ptr,
    seq_lens_ptr,
    block_table_ptr,
    alibi_slopes_ptr,
    sinks_ptr,
    k_scale_ptr,
    v_scale_ptr,
    causal_ptr,  # [num_seqs] int32 per-sequence causal flags, with PER_SEQ_CAUSAL
    mm_ranges_ptr,  # [num_seqs, num_mm_ranges, 2] int32 (start, end), with HAS_MM_PREFIX
    rswa_prefix_lens_ptr,  # [num_seqs] int32 R-SWA prompt prefixes, with HAS_RSWA
    rht_signs_ptr,  # [head_size] float32 rotation signs of an int4 cache, with KV_INT4
    q_scale_ptr,  # fp8 queries' float32 scale (one, or one per KV head), with Q_IS_FP8
    out_scale_ptr,  # fused fp8 output's float32 scale (jit_helpers.output_values), or None
    lse_ptr,  # [num_tokens, num_q_heads] float32 log-sum-exps (jit_helpers.store_lse), or None
    # strides
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_block_table_seq,
    stride_partial_token,
    stride_partial_head,
    stride_mm_seq,
    stride_scale_block,  # of the per-token-head scales (K's and V's), with TOKEN_HEAD_SCALES
    stride_scale_slot,
    stride_scale_head,
    stride_q_scale,  # 0 (one scale) or 1 (one per KV head)
    stride_lse_token,
    stride_lse_head,
    # scalars
    num_mm_ranges,
    scale,
    soft_cap,
    sliding_window,
    # shapes and switches
    STRIDE_Q_DIM: tl.constexpr,
    STRIDE_OUT_DIM: tl.constexpr,
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    NUM_KV_SPLITS: tl.constexpr,
    MIN_SPLIT_KEYS: tl.constexpr,  # 0, or batch-invariant splits of at least this many keys
    FOLD_SPLITS: tl.constexpr,  # batch-invariant, one program per sequence: no merge
    IS_CAUSAL: tl.constexpr,
    PER_SEQ_CAUSAL: tl.constexpr,
    HAS_MM_PREFIX: tl.constexpr,
    MM_CLAMP_TO_WINDOW: tl.constexpr,
    HAS_SLIDING_WINDOW: tl.constexpr,
    HAS_RSWA: tl.constexpr,  # keys below the prompt prefix visible beside the window
    CHUNK_LOOKBACK: tl.constexpr,  # -1, or a chunked window (sliding_window = chunk size)
    HAS_SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,  # None, "linear" or "sqrt"
    HAS_SINKS: tl.constexpr,
    KV_IS_FP8: tl.constexpr,  # fp8 with a scale per tensor
    TOKEN_HEAD_SCALES: tl.constexpr,  # int8, fp8 or int4 with a scale per token and KV head
    KV_INT4: tl.constexpr,  # int4 codes of rotated vectors (jit_helpers.rotate_rows)
    Q_IS_FP8: tl.constexpr,  # fp8 queries (an fp8 cache of their format)
    DOT_PRECISION: tl.constexpr,
    EARLY_DEPENDENTS: tl.constexpr,
    PREFETCH_BLOCKS: tl.constexpr,
    PDL: tl.constexpr,
):
    # Launched early (programmatic launch): the programs are in place when
    # the kernel before finishes (in vLLM the cache write), and read nothing
    # before it has. Only then may the launch after this one start: a mixed
    # batch's long queries read what that kernel wrote without waiting.
    if PDL:
        gdc_wait()
    if EARLY_DEPENDENTS:  # see launch.py
        gdc_launch_dependents()
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_len == 0:  # a padding row of the batch
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len
    seq_causal = None  # IS_CAUSAL holds for every sequence
    if PER_SEQ_CAUSAL:
        seq_causal = tl.load(causal_ptr + seq) != 0

    # Every query token of the sequence (at most BLOCK_M // QUERIES_PER_KV,
    # guaranteed by the plan) times every query head of this KV head.
    token, head, row_valid = query_rows(
        first_token=0, q_len=q_len, kv_head=kv_head, BLOCK_M=BLOCK_M, QUERIES_PER_KV=QUERIES_PER_KV
    )
    query_pos = context_len + token
    dim = tl.arange(0, HEAD_PAD)
    dim_mask = dim < HEAD_SIZE
    q_offset = (q_start + token).to(tl.int64) * stride_q_token + head * stride_q_head
    q = tl.load(
        q_ptr + q_offset[:, None] + dim[None, :] * STRIDE_Q_DIM,
        mask=row_valid[:, None] & dim_mask[None, :],
        other=0.0,
    )
    RHT_BLOCK: tl.constexpr = HEAD_SIZE & -HEAD_SIZE  # arch.rht_block
    if KV_INT4:  # attention runs in the cache's rotated space
        q = rotate_rows(q, rht_signs_ptr, dim, dim_mask, RHT_BLOCK)
    cache_dim, cache_dim_mask = cache_columns(HEAD_SIZE, HEAD_PAD, KV_INT4)

    # This program's share of the keys any row can see, in whole key tiles.
    kv_lo = 0
    if CHUNK_LOOKBACK >= 0:
        kv_lo = tl.maximum(window_start(context_len, sliding_window, CHUNK_LOOKBACK), 0)
    elif HAS_SLIDING_WINDOW:
        kv_lo = tl.maximum(context_len - sliding_window + 1, 0)
    mm_lo = None  # no multimodal ranges
    mm_hi = None
    if HAS_MM_PREFIX:
        mm_lo, mm_hi = mm_prefix_rows(
            mm_ranges_ptr,
            stride_mm_seq,
            num_mm_ranges,
            seq,
            query_pos,
            seq_len,
            sliding_window,
            CLAMP_TO_WINDOW=MM_CLAMP_TO_WINDOW,
        )
        kv_lo, _ = widen_key_range(kv_lo, seq_len, mm_lo, mm_hi, row_valid)
    # R-SWA: the prompt prefix [0, prefix_hi), then the window from kv_lo on;
    # the splits cut the two as one range of num_keys keys (_decode_split).
    prefix_hi = 0
    if HAS_RSWA:
        prefix_hi = tl.minimum(tl.load(rswa_prefix_lens_ptr + seq), seq_len)
        kv_lo = tl.maximum(kv_lo, prefix_hi)
    num_keys = prefix_hi + seq_len - kv_lo
    # One split per program: num_splits = NUM_KV_SPLITS, the grid's third
    # dimension, and a loop of one trip (a constant, so it compiles away).
    # Batch-invariant (MIN_SPLIT_KEYS): the sequence's own length sets its
    # splits (split_count), and the grid's programs take them in turn; a
    # program that takes them all (FOLD_SPLITS) folds each into the output as
    # the merge kernel would (fold_split) instead of storing partials.
    num_splits = NUM_KV_SPLITS
    programs = NUM_KV_SPLITS
    trips = 1
    if MIN_SPLIT_KEYS > 0:
        num_splits = split_count(num_keys, MIN_SPLIT_KEYS, NUM_KV_SPLITS)
        programs = tl.num_programs(2)
        trips = tl.cdiv(num_splits - split, programs)
        if (split == 0) and not FOLD_SPLITS:
            mark_empty_splits(
                partial_lse_ptr,
                q_start,
                token,
                head,
                row_valid,
                num_splits,
                stride_partial_token=stride_partial_token,
                BLOCK_M=BLOCK_M,
                HEAD_PAD=HEAD_PAD,
                NUM_KV_SPLITS=NUM_KV_SPLITS,
            )
    if FOLD_SPLITS:
        lse_ref = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        folded = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    for i in range(trips):
        acc, m_i, l_i = _decode_split(
            q=q,
            token=token,
            head=head,
            row_valid=row_valid,
            query_pos=query_pos,
            dim=dim,
            dim_mask=dim_mask,
            cache_dim=cache_dim,
            cache_dim_mask=cache_dim_mask,
            rht_signs_ptr=rht_signs_ptr,
            q_scale_ptr=q_scale_ptr,
            stride_q_scale=stride_q_scale,
            out_scale_ptr=out_scale_ptr,
            lse_ptr=lse_ptr,
            stride_lse_token=stride_lse_token,
            stride_lse_head=stride_lse_head,
            seq=seq,
            q_start=q_start,
            seq_len=seq_len,
            kv_lo=kv_lo,
            prefix_hi=prefix_hi,
            num_keys=num_keys,
            kv_head=kv_head,
            seq_causal=seq_causal,
            mm_lo=mm_lo,
            mm_hi=mm_hi,
            k_cache_ptr=k_cache_ptr,
            v_cache_ptr=v_cache_ptr,
            out_ptr=out_ptr,
            partial_out_ptr=partial_out_ptr,
            partial_lse_ptr=partial_lse_ptr,
            block_table_ptr=block_table_ptr,
            alibi_slopes_ptr=alibi_slopes_ptr,
            sinks_ptr=sinks_ptr,
            k_scale_ptr=k_scale_ptr,
            v_scale_ptr=v_scale_ptr,
            stride_out_token=stride_out_token,
            stride_out_head=stride_out_head,
            stride_k_block=stride_k_block,
            stride_k_slot=stride_k_slot,
            stride_k_head=stride_k_head,
            stride_v_block=stride_v_block,
            stride_v_slot=stride_v_slot,
            stride_v_head=stride_v_head,
            stride_block_table_seq=stride_block_table_seq,
            stride_partial_token=stride_partial_token,
            stride_partial_head=stride_partial_head,
            stride_scale_block=stride_scale_block,
            stride_scale_slot=stride_scale_slot,
            stride_scale_head=stride_scale_head,
            scale=scale,
            soft_cap=soft_cap,
            sliding_window=sliding_window,
            STRIDE_OUT_DIM=STRIDE_OUT_DIM,
            STRIDE_K_DIM=STRIDE_K_DIM,
            STRIDE_V_DIM=STRIDE_V_DIM,
            HEAD_PAD=HEAD_PAD,
            BLOCK_SIZE=BLOCK_SIZE,
            BLOCK_M=BLOCK_M,
            TILE_N=TILE_N,
            NUM_KV_SPLITS=NUM_KV_SPLITS,
            IS_CAUSAL=IS_CAUSAL,
            HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
            HAS_RSWA=HAS_RSWA,
            CHUNK_LOOKBACK=CHUNK_LOOKBACK,
            HAS_SOFTCAP=HAS_SOFTCAP,
            ALIBI=ALIBI,
            HAS_SINKS=HAS_SINKS,
            KV_IS_FP8=KV_IS_FP8,
            TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
            KV_INT4=KV_INT4,
            RHT_BLOCK=RHT_BLOCK,
            Q_IS_FP8=Q_IS_FP8,
            DOT_PRECISION=DOT_PRECISION,
            PREFETCH_BLOCKS=PREFETCH_BLOCKS,
            STORE_RESULT=not FOLD_SPLITS,
            split=split + i * programs,
            num_splits=num_splits,
        )
        if FOLD_SPLITS:
            lse_ref, total, folded = fold_split(
                lse_ref, total, folded, split_partial(acc, l_i), split_lse(m_i, l_i)
            )
    if FOLD_SPLITS:  # the folded sum is the output, stored as a single split's
        store_split_result(
            out_ptr,
            partial_out_ptr,
            partial_lse_ptr,
            folded,
            lse_ref,
            total,
            q_start,
            token,
            head,
            0,
            row_valid,
            dim,
            dim_mask,
            v_scale=load_v_scale(v_scale_ptr, KV_IS_FP8),
            stride_out_token=stride_out_token,
            stride_out_head=stride_out_head,
            stride_partial_token=stride_partial_token,
            stride_partial_head=stride_partial_head,
            STRIDE_OUT_DIM=STRIDE_OUT_DIM,
            HEAD_PAD=HEAD_PAD,
            NUM_KV_SPLITS=1,
            out_scale_ptr=out_scale_ptr,
            lse_ptr=lse_ptr,
            stride_lse_token=stride_lse_token,
            stride_lse_head=stride_lse_head,
        )


@triton.jit
def _decode_split(
    q,
    token,
    head,
    row_valid,
    query_pos,
    dim,
    dim_mask,
    cache_dim,  # the columns of a cache row it reads (jit_helpers.cache_columns)
    cache_dim_mask,
    seq,
    q_start,
    seq_len,
    kv_lo,
    prefix_hi,
    num_keys,
    kv_head,
    seq_causal,
    mm_lo,
    mm_hi,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    partial_out_ptr,
    partial_lse_ptr,
    block_table_ptr,
    alibi_slopes_ptr,
    sinks_ptr,
    k_scale_ptr,
    v_scale_ptr,
    rht_signs_ptr,
    q_scale_ptr,
    stride_q_scale,
    out_scale_ptr,
    lse_ptr,
    stride_lse_token,
    stride_lse_head,
    stride_out_token,
    stride_out_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_block_table_seq,
    stride_partial_token,
    stride_partial_head,
    stride_scale_block,
    stride_scale_slot,
    stride_scale_head,
    scale,
    soft_cap,
    sliding_window,
    split,
    num_splits,
    STRIDE_OUT_DIM: tl.constexpr,
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    NUM_KV_SPLITS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_SLIDING_WINDOW: tl.constexpr,
    HAS_RSWA: tl.constexpr,
    CHUNK_LOOKBACK: tl.constexpr,  # -1, or a chunked window (sliding_window = chunk size)
    HAS_SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,  # None, "linear" or "sqrt"
    HAS_SINKS: tl.constexpr,
    KV_IS_FP8: tl.constexpr,
    TOKEN_HEAD_SCALES: tl.constexpr,
    KV_INT4: tl.constexpr,
    RHT_BLOCK: tl.constexpr,
    Q_IS_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PREFETCH_BLOCKS: tl.constexpr,
    STORE_RESULT: tl.constexpr,
):
    """Split ``split`` of ``num_splits`` of one (sequence, KV head): its key
    range, the online softmax over it, and its result (``store_split_result``)
    unless the caller folds the returned ``(acc, m_i, l_i)`` itself.

    Its share of the keys from ``kv_lo`` on; with R-SWA, of the ``num_keys``
    keys of the prompt prefix ``[0, prefix_hi)`` and then those from ``kv_lo`` on."""
    if HAS_RSWA:
        split_lo, split_hi = split_key_range(num_keys, 0, split, num_splits, TILE_N)
    else:
        split_lo, split_hi = split_key_range(seq_len, kv_lo, split, num_splits, TILE_N)

    # The sink joins the softmax once per row, through the first split. (A
    # where, not `&` with the scalar: Triton 3.9's interpreter rejects that mask.)
    first_split_rows = tl.where(split == 0, row_valid, False)
    m_i, l_i = init_softmax_state(sinks_ptr, head, first_split_rows, HAS_SINKS, BLOCK_M)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    head_q_scale_ptr = None  # fp8 queries: this KV head's scale
    if Q_IS_FP8:
        head_q_scale_ptr = q_scale_ptr + kv_head * stride_q_scale
    qk_scale = load_qk_scale(scale, k_scale_ptr, KV_IS_FP8, HAS_SOFTCAP, head_q_scale_ptr)
    alibi_slope = 0.0
    if ALIBI is not None:
        alibi_slope = tl.load(alibi_slopes_ptr + head, mask=row_valid, other=0.0)

    block_table_row_ptr = block_table_ptr + seq.to(tl.int64) * stride_block_table_seq
    if HAS_RSWA:  # the prefix keys of the split, causal only
        prefix_end = tl.minimum(split_hi, prefix_hi)
        acc, m_i, l_i = attend_key_tiles(
            acc,
            m_i,
            l_i,
            q,
            tile_begin=split_lo,
            tile_end=prefix_end,
            kv_lo=split_lo,
            kv_hi=prefix_end,
            query_pos=query_pos,
            seq_len=seq_len,
            sliding_window=sliding_window,
            qk_scale=qk_scale,
            soft_cap=soft_cap,
            alibi_slope=alibi_slope,
            k_cache_ptr=k_cache_ptr,
            v_cache_ptr=v_cache_ptr,
            block_table_row_ptr=block_table_row_ptr,
            kv_head=kv_head,
            dim=cache_dim,
            dim_mask=cache_dim_mask,
            stride_k_block=stride_k_block,
            stride_k_slot=stride_k_slot,
            stride_k_head=stride_k_head,
            stride_v_block=stride_v_block,
            stride_v_slot=stride_v_slot,
            stride_v_head=stride_v_head,
            STRIDE_K_DIM=STRIDE_K_DIM,
            STRIDE_V_DIM=STRIDE_V_DIM,
            BLOCK_SIZE=BLOCK_SIZE,
            TILE_N=TILE_N,
            MASKED=True,
            IS_CAUSAL=IS_CAUSAL,
            HAS_SLIDING_WINDOW=False,
            HAS_SOFTCAP=HAS_SOFTCAP,
            ALIBI=ALIBI,
            DOT_PRECISION=DOT_PRECISION,
            PREFETCH_BLOCKS=PREFETCH_BLOCKS,
            CLIP_TO_RANGE=True,
            k_scale_ptr=k_scale_ptr,
            v_scale_ptr=v_scale_ptr,
            stride_scale_block=stride_scale_block,
            stride_scale_slot=stride_scale_slot,
            stride_scale_head=stride_scale_head,
            TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
            KV_INT4=KV_INT4,
        )
        # then the split's keys of the window
        split_lo = tl.maximum(split_lo, prefix_hi) - prefix_hi + kv_lo
        split_hi = split_hi - prefix_hi + kv_lo
    acc, m_i, l_i = attend_key_tiles(
        acc,
        m_i,
        l_i,
        q,
        tile_begin=split_lo,
        tile_end=split_hi,
        kv_lo=split_lo,
        kv_hi=split_hi,
        query_pos=query_pos,
        seq_len=seq_len,
        sliding_window=sliding_window,
        qk_scale=qk_scale,
        soft_cap=soft_cap,
        alibi_slope=alibi_slope,
        k_cache_ptr=k_cache_ptr,
        v_cache_ptr=v_cache_ptr,
        block_table_row_ptr=block_table_row_ptr,
        kv_head=kv_head,
        dim=cache_dim,
        dim_mask=cache_dim_mask,
        stride_k_block=stride_k_block,
        stride_k_slot=stride_k_slot,
        stride_k_head=stride_k_head,
        stride_v_block=stride_v_block,
        stride_v_slot=stride_v_slot,
        stride_v_head=stride_v_head,
        STRIDE_K_DIM=STRIDE_K_DIM,
        STRIDE_V_DIM=STRIDE_V_DIM,
        BLOCK_SIZE=BLOCK_SIZE,
        TILE_N=TILE_N,
        MASKED=True,
        IS_CAUSAL=IS_CAUSAL,
        seq_causal=seq_causal,
        mm_lo=mm_lo,
        mm_hi=mm_hi,
        HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
        CHUNK_LOOKBACK=CHUNK_LOOKBACK,
        HAS_SOFTCAP=HAS_SOFTCAP,
        ALIBI=ALIBI,
        DOT_PRECISION=DOT_PRECISION,
        PREFETCH_BLOCKS=PREFETCH_BLOCKS,
        CLIP_TO_RANGE=HAS_RSWA,
        k_scale_ptr=k_scale_ptr,
        v_scale_ptr=v_scale_ptr,
        stride_scale_block=stride_scale_block,
        stride_scale_slot=stride_scale_slot,
        stride_scale_head=stride_scale_head,
        TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
        KV_INT4=KV_INT4,
    )
    if KV_INT4:  # back from the cache's rotated space (a linear map: before the merge)
        acc = unrotate_values(acc, rht_signs_ptr, dim, dim_mask, RHT_BLOCK)
    if STORE_RESULT:
        store_split_result(
            out_ptr,
            partial_out_ptr,
            partial_lse_ptr,
            acc,
            m_i,
            l_i,
            q_start,
            token,
            head,
            split,
            row_valid,
            dim,
            dim_mask,
            v_scale=load_v_scale(v_scale_ptr, KV_IS_FP8),
            stride_out_token=stride_out_token,
            stride_out_head=stride_out_head,
            stride_partial_token=stride_partial_token,
            stride_partial_head=stride_partial_head,
            STRIDE_OUT_DIM=STRIDE_OUT_DIM,
            HEAD_PAD=HEAD_PAD,
            NUM_KV_SPLITS=NUM_KV_SPLITS,
            out_scale_ptr=out_scale_ptr,
            lse_ptr=lse_ptr,
            stride_lse_token=stride_lse_token,
            stride_lse_head=stride_lse_head,
        )
    return acc, m_i, l_i


@triton.jit
def merge_kv_splits_kernel(
    # pointers
    out_ptr,
    partial_out_ptr,
    partial_lse_ptr,
    query_start_loc_ptr,
    v_scale_ptr,
    out_scale_ptr,  # fused fp8 output's float32 scale (jit_helpers.output_values), or None
    lse_ptr,  # [num_tokens, num_q_heads] float32 log-sum-exps (jit_helpers.store_lse), or None
    # strides
    stride_out_token,
    stride_out_head,
    stride_partial_token,
    stride_partial_head,
    stride_lse_token,
    stride_lse_head,
    # scalars
    num_seqs,
    # shapes and switches
    STRIDE_OUT_DIM: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    HEADS_PER_PROGRAM: tl.constexpr,
    DIMS_PER_PROGRAM: tl.constexpr,
    NUM_KV_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    SPARSE_SPLITS: tl.constexpr,  # batch-invariant: fold in split order, only splits with keys
    KV_IS_FP8: tl.constexpr,
    PDL: tl.constexpr,
):
    """out[token, head] = sum_s w_s * partial_s / sum_s w_s, w_s = 2**(lse_s - max lse).

    A program combines a tile of ``HEADS_PER_PROGRAM`` consecutive heads of one
    token (their partials are contiguous) by ``DIMS_PER_PROGRAM`` dimensions;
    see ``AttentionPlan.merge_tile`` for how the plan sizes it. Batch-invariant
    splits (``SPARSE_SPLITS``) are folded one at a time in split order
    (``fold_split``), exactly as a program that takes all of a sequence's
    splits folds them."""
    token = tl.program_id(0)
    # Tokens outside this launch's sequences (padding, or the long queries of a
    # mixed batch) have no partials.
    if (token < tl.load(query_start_loc_ptr)) | (token >= tl.load(query_start_loc_ptr + num_seqs)):
        return

    if PDL:  # launched early: the partials are complete only after this
        gdc_wait()
    head = tl.program_id(1) * HEADS_PER_PROGRAM + tl.arange(0, HEADS_PER_PROGRAM)
    head_mask = head < NUM_Q_HEADS
    dim = tl.program_id(2) * DIMS_PER_PROGRAM + tl.arange(0, DIMS_PER_PROGRAM)
    dim_mask = dim < HEAD_SIZE
    lse_row = token.to(tl.int64) * (stride_partial_token // HEAD_PAD) + head * NUM_KV_SPLITS
    row = token.to(tl.int64) * stride_partial_token + head * stride_partial_head
    v_scale = load_v_scale(v_scale_ptr, KV_IS_FP8)
    if SPARSE_SPLITS:
        lse_ref = tl.full([HEADS_PER_PROGRAM], float("-inf"), tl.float32)
        total = tl.zeros([HEADS_PER_PROGRAM], dtype=tl.float32)
        folded = tl.zeros([HEADS_PER_PROGRAM, DIMS_PER_PROGRAM], dtype=tl.float32)
        # Unrolled: every split's loads are independent, so they are all in
        # flight at once; a split past the sequence's own (lse -inf, no partial
        # stored) loads nothing and folds as nothing.
        for split in tl.static_range(NUM_KV_SPLITS):
            lse = tl.load(partial_lse_ptr + lse_row + split, mask=head_mask, other=float("-inf"))
            partial = tl.load(
                partial_out_ptr + row[:, None] + split * HEAD_PAD + dim[None, :],
                mask=(lse != float("-inf"))[:, None] & dim_mask[None, :],
                other=0.0,
            )
            lse_ref, total, folded = fold_split(lse_ref, total, folded, partial, lse)
        merged_lse = split_lse(lse_ref, total)
        result = normalised_output(folded, total, v_scale)
    else:
        splits = tl.arange(0, SPLITS_PAD)
        split_mask = head_mask[:, None] & (splits < NUM_KV_SPLITS)[None, :]  # [heads, splits]
        # Both loads are issued before either is used: the partials do not wait
        # for the weights (a split without keys stored zeros, so its rows are
        # finite and its weight of 0 removes them).
        lse = tl.load(
            partial_lse_ptr + lse_row[:, None] + splits[None, :],
            mask=split_mask,
            other=float("-inf"),
        )
        partial = tl.load(
            partial_out_ptr
            + row[:, None, None]
            + splits[None, :, None] * HEAD_PAD
            + dim[None, None, :],
            mask=split_mask[:, :, None] & dim_mask[None, None, :],
            other=0.0,
        )
        lse_max = tl.max(lse, 1)
        lse_ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)
        weight = tl.math.exp2(lse - lse_ref[:, None])
        total = tl.sum(weight, 1)
        merged_lse = split_lse(lse_ref, total)
        total = tl.where(total == 0.0, 1.0, total)
        weighted = tl.where(weight[:, :, None] != 0.0, partial * weight[:, :, None], 0.0)
        result = tl.sum(weighted, 1) * (v_scale / total)[:, None]
    out_offset = token.to(tl.int64) * stride_out_token + head * stride_out_head
    tl.store(
        out_ptr + out_offset[:, None] + dim[None, :] * STRIDE_OUT_DIM,
        output_values(result, out_ptr, out_scale_ptr),
        mask=head_mask[:, None] & dim_mask[None, :],
    )
    if lse_ptr is not None:  # once per head: by the programs of the first dimensions
        lse_offset = token.to(tl.int64) * stride_lse_token + head * stride_lse_head
        store_lse(lse_ptr + lse_offset, merged_lse, head_mask & (tl.program_id(2) == 0))
