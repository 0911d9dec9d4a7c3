# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Long-query paged attention: prefill, chunked prefill and prefix caching.

One program owns one Q tile, ``BLOCK_M`` rows that pack every query head of one
KV head for ``BLOCK_M // queries_per_kv`` consecutive tokens of one sequence,
and walks the sequence's keys in tiles of ``TILE_N`` (independent of the cache
block size) with an online softmax. Key tiles that every row of the Q tile
sees in full run without masks; only the tiles on the causal diagonal and at
the sliding-window edge pay for masking. Tiles above the diagonal are never
visited.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .jit_helpers import (
    attend_key_tiles,
    cache_columns,
    find_q_tile,
    init_softmax_state,
    key_range,
    load_qk_scale,
    load_v_scale,
    mm_prefix_rows,
    output_values,
    query_rows,
    rotate_rows,
    split_lse,
    store_lse,
    unrotate_values,
    widen_key_range,
)


@triton.jit
def long_query_attention_kernel(
    # pointers
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
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
    # strides (the head-dim strides are constexpr: almost always 1)
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
    stride_mm_seq,
    stride_scale_block,  # of the per-token-head scales (K's and V's), with TOKEN_HEAD_SCALES
    stride_scale_slot,
    stride_scale_head,
    stride_q_scale,  # 0 (one scale) or 1 (one per KV head)
    stride_lse_token,
    stride_lse_head,
    # scalars
    num_seqs,
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
    PDL: tl.constexpr,
):
    BLOCK_Q: tl.constexpr = BLOCK_M // QUERIES_PER_KV  # tokens per Q tile
    seq, q_start, q_len, first_token, kv_head = find_q_tile(query_start_loc_ptr, num_seqs, BLOCK_Q)
    if first_token >= q_len:  # the grid is an upper bound; spare programs leave
        if PDL:
            gdc_wait()
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # the query tokens are the last q_len positions
    seq_causal = None  # IS_CAUSAL holds for every sequence
    if PER_SEQ_CAUSAL:
        seq_causal = tl.load(causal_ptr + seq) != 0

    token, head, row_valid = query_rows(first_token, q_len, kv_head, BLOCK_M, QUERIES_PER_KV)
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

    m_i, l_i = init_softmax_state(sinks_ptr, head, row_valid, HAS_SINKS, BLOCK_M)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    head_q_scale_ptr = None  # fp8 queries: this KV head's scale
    if Q_IS_FP8:
        head_q_scale_ptr = q_scale_ptr + kv_head * stride_q_scale
    qk_scale = load_qk_scale(scale, k_scale_ptr, KV_IS_FP8, HAS_SOFTCAP, head_q_scale_ptr)
    alibi_slope = 0.0
    if ALIBI is not None:
        alibi_slope = tl.load(alibi_slopes_ptr + head, mask=row_valid, other=0.0)

    # Keys this tile can need: [kv_lo, kv_hi). Keys every valid row sees:
    # [full_lo, full_hi); both ends rounded inwards to whole key tiles.
    first_pos = context_len + first_token
    last_pos = context_len + tl.minimum(first_token + BLOCK_Q, q_len) - 1
    kv_lo, kv_hi, full_lo, full_hi = key_range(
        first_pos,
        last_pos,
        seq_len,
        sliding_window,
        IS_CAUSAL,
        HAS_SLIDING_WINDOW,
        seq_causal,
        CHUNK_LOOKBACK=CHUNK_LOOKBACK,
    )
    mm_lo = None  # no multimodal ranges
    mm_hi = None
    if HAS_MM_PREFIX:  # range keys widen what the tile reads, never what all rows see
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
        kv_lo, kv_hi = widen_key_range(kv_lo, kv_hi, mm_lo, mm_hi, row_valid)
    if HAS_RSWA:  # the prompt prefix, causal only; then the window past it
        block_table_row_ptr = block_table_ptr + seq.to(tl.int64) * stride_block_table_seq
        prefix_len = tl.load(rswa_prefix_lens_ptr + seq)
        prefix_hi = tl.minimum(prefix_len, kv_hi)
        for masked in tl.static_range(2):  # tiles every row sees in full, then the rest
            prefix_full = tl.minimum(prefix_len, full_hi) // TILE_N * TILE_N
            acc, m_i, l_i = attend_key_tiles(
                acc,
                m_i,
                l_i,
                q,
                tile_begin=prefix_full if masked else 0,
                tile_end=prefix_hi if masked else prefix_full,
                kv_lo=0,
                kv_hi=prefix_hi,
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
                IS_CAUSAL=IS_CAUSAL,
                HAS_SLIDING_WINDOW=False,
                HAS_SOFTCAP=HAS_SOFTCAP,
                ALIBI=ALIBI,
                DOT_PRECISION=DOT_PRECISION,
                PREFETCH_BLOCKS=False,
                MASKED=masked == 1,
                CLIP_TO_RANGE=True,
                k_scale_ptr=k_scale_ptr,
                v_scale_ptr=v_scale_ptr,
                stride_scale_block=stride_scale_block,
                stride_scale_slot=stride_scale_slot,
                stride_scale_head=stride_scale_head,
                TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
                KV_INT4=KV_INT4,
            )
        kv_lo = tl.maximum(kv_lo, prefix_hi)
        full_lo = tl.maximum(full_lo, kv_lo)
    full_lo = tl.cdiv(full_lo, TILE_N) * TILE_N
    full_hi = tl.maximum(full_hi // TILE_N * TILE_N, full_lo)
    tile_lo = kv_lo // TILE_N * TILE_N

    block_table_row_ptr = block_table_ptr + seq.to(tl.int64) * stride_block_table_seq
    if HAS_SLIDING_WINDOW:  # left edge of the window: masked
        acc, m_i, l_i = attend_key_tiles(
            acc,
            m_i,
            l_i,
            q,
            tile_begin=tile_lo,
            tile_end=tl.minimum(full_lo, kv_hi),
            kv_lo=kv_lo,
            kv_hi=kv_hi,
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
            IS_CAUSAL=IS_CAUSAL,
            seq_causal=seq_causal,
            mm_lo=mm_lo,
            mm_hi=mm_hi,
            HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
            CHUNK_LOOKBACK=CHUNK_LOOKBACK,
            HAS_SOFTCAP=HAS_SOFTCAP,
            ALIBI=ALIBI,
            DOT_PRECISION=DOT_PRECISION,
            PREFETCH_BLOCKS=False,
            MASKED=True,
            CLIP_TO_RANGE=HAS_RSWA,
            k_scale_ptr=k_scale_ptr,
            v_scale_ptr=v_scale_ptr,
            stride_scale_block=stride_scale_block,
            stride_scale_slot=stride_scale_slot,
            stride_scale_head=stride_scale_head,
            TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
            KV_INT4=KV_INT4,
        )
    # the bulk: no masks
    acc, m_i, l_i = attend_key_tiles(
        acc,
        m_i,
        l_i,
        q,
        tile_begin=full_lo,
        tile_end=full_hi,
        kv_lo=kv_lo,
        kv_hi=kv_hi,
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
        IS_CAUSAL=IS_CAUSAL,
        seq_causal=seq_causal,
        mm_lo=mm_lo,
        mm_hi=mm_hi,
        HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
        CHUNK_LOOKBACK=CHUNK_LOOKBACK,
        HAS_SOFTCAP=HAS_SOFTCAP,
        ALIBI=ALIBI,
        DOT_PRECISION=DOT_PRECISION,
        PREFETCH_BLOCKS=False,
        MASKED=False,
        k_scale_ptr=k_scale_ptr,
        v_scale_ptr=v_scale_ptr,
        stride_scale_block=stride_scale_block,
        stride_scale_slot=stride_scale_slot,
        stride_scale_head=stride_scale_head,
        TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
        KV_INT4=KV_INT4,
    )
    # the causal diagonal (or the ragged end of the sequence): masked
    acc, m_i, l_i = attend_key_tiles(
        acc,
        m_i,
        l_i,
        q,
        tile_begin=tl.maximum(full_hi, full_lo),
        tile_end=kv_hi,
        kv_lo=kv_lo,
        kv_hi=kv_hi,
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
        IS_CAUSAL=IS_CAUSAL,
        seq_causal=seq_causal,
        mm_lo=mm_lo,
        mm_hi=mm_hi,
        HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
        CHUNK_LOOKBACK=CHUNK_LOOKBACK,
        HAS_SOFTCAP=HAS_SOFTCAP,
        ALIBI=ALIBI,
        DOT_PRECISION=DOT_PRECISION,
        PREFETCH_BLOCKS=False,
        MASKED=True,
        CLIP_TO_RANGE=HAS_RSWA,
        k_scale_ptr=k_scale_ptr,
        v_scale_ptr=v_scale_ptr,
        stride_scale_block=stride_scale_block,
        stride_scale_slot=stride_scale_slot,
        stride_scale_head=stride_scale_head,
        TOKEN_HEAD_SCALES=TOKEN_HEAD_SCALES,
        KV_INT4=KV_INT4,
    )

    if KV_INT4:
        acc = unrotate_values(acc, rht_signs_ptr, dim, dim_mask, RHT_BLOCK)
    if lse_ptr is not None:
        lse_offset = (q_start + token).to(tl.int64) * stride_lse_token + head * stride_lse_head
        store_lse(lse_ptr + lse_offset, split_lse(m_i, l_i), row_valid)
    v_scale = load_v_scale(v_scale_ptr, KV_IS_FP8)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    result = acc * (v_scale / l_i)[:, None]
    out_offset = (q_start + token).to(tl.int64) * stride_out_token + head * stride_out_head
    tl.store(
        out_ptr + out_offset[:, None] + dim[None, :] * STRIDE_OUT_DIM,
        output_values(result, out_ptr, out_scale_ptr),
        mask=row_valid[:, None] & dim_mask[None, :],
    )
    if PDL:
        # Launched early, beside a mixed batch's split-KV decode, whose output
        # it does not read. Waiting at exit makes this kernel's completion
        # imply the decode's, as the kernels after attention assume.
        gdc_wait()
